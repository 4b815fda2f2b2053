//! Sending batches to a sink, and knowing when one is delivered.
//!
//! syslog over TCP has no acknowledgment of its own: a batch counts as
//! delivered once the receiver's TCP stack acknowledged its every byte
//! (the socket's send queue is empty) while the connection is still
//! established. A receiver that closed or reset the connection fails the
//! batch, which is sent again on a new connection; and since a receiver
//! may have been reset after acknowledging the batch before (its bytes
//! still unread), every new connection starts with that previous batch
//! again. At least once, at most the last batch twice. A file sink's batch
//! is delivered once written and flushed to the disk (`fdatasync`).

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::config::{LogSink, split_address};
use super::format::{self, Labels};
use super::record::Record;

/// Longest wait for the receiver to acknowledge a batch, or to connect.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A batch that did not reach its sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("connecting to {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {address}")]
    Tls {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("sending to {sink}")]
    Write {
        sink: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{sink} did not acknowledge the batch: {reason}")]
    NotAcknowledged { sink: String, reason: String },
}

/// A sink and its open connection or file.
pub struct SinkWriter {
    sink: LogSink,
    name: String,
    conn: Option<Conn>,
    /// The last batch delivered on a connection, as sent (syslog only):
    /// sent again first on the next connection.
    last: Vec<u8>,
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    File(tokio::fs::File),
}

impl SinkWriter {
    pub fn new(sink: LogSink) -> SinkWriter {
        SinkWriter {
            name: sink.name(),
            sink,
            conn: None,
            last: Vec::new(),
        }
    }

    /// Sends `records` and waits until they are delivered; on an error
    /// the connection is dropped, and the next call opens a new one.
    pub async fn send(&mut self, labels: &Labels, records: &[Record]) -> Result<(), SinkError> {
        let result = self.try_send(labels, records).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn try_send(&mut self, labels: &Labels, records: &[Record]) -> Result<(), SinkError> {
        let mut buf = Vec::with_capacity(records.iter().map(|r| r.message.len() + 200).sum());
        let encode = match self.sink {
            LogSink::Syslog { .. } => format::syslog_frame,
            LogSink::File { .. } => format::json_line,
        };
        for r in records {
            encode(&mut buf, labels, r);
        }
        // A receiver that closed the connection while it was idle.
        if self.conn.as_ref().is_some_and(|c| !c.established()) {
            self.conn = None;
        }
        let again = self.conn.is_none();
        if again {
            self.conn = Some(self.connect().await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let write_err = |source| SinkError::Write {
            sink: self.name.clone(),
            source,
        };
        let previous: &[u8] = if again { &self.last } else { &[] };
        match conn {
            Conn::Tcp(s) => {
                s.write_all(previous).await.map_err(write_err)?;
                s.write_all(&buf).await.map_err(write_err)?;
            }
            Conn::Tls(s) => {
                s.write_all(previous).await.map_err(write_err)?;
                s.write_all(&buf).await.map_err(write_err)?;
                s.flush().await.map_err(write_err)?;
            }
            Conn::File(f) => {
                f.write_all(&buf).await.map_err(write_err)?;
                f.sync_data().await.map_err(write_err)?;
                return Ok(());
            }
        }
        conn.acknowledged(&self.name).await?;
        self.last = buf;
        Ok(())
    }

    async fn connect(&self) -> Result<Conn, SinkError> {
        match &self.sink {
            LogSink::File { path } => {
                open_json_lines(path)
                    .await
                    .map(Conn::File)
                    .map_err(|source| SinkError::Write {
                        sink: self.name.clone(),
                        source,
                    })
            }
            LogSink::Syslog {
                address,
                tls,
                ca_file,
            } => {
                let connect_err = |source| SinkError::Connect {
                    address: address.clone(),
                    source,
                };
                let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(address.as_str()))
                    .await
                    .map_err(|_| connect_err(std::io::ErrorKind::TimedOut.into()))?
                    .map_err(connect_err)?;
                let _ = tcp.set_nodelay(true);
                match (tls, ca_file) {
                    (true, Some(ca)) => tls_connect(address, ca, tcp).await,
                    _ => Ok(Conn::Tcp(tcp)),
                }
            }
        }
    }
}

/// Opens a JSON-lines file for appending. A last line cut by a crash in
/// the middle of a write is ended first, so that the next object starts a
/// line of its own (the cut batch is written again whole).
async fn open_json_lines(path: &Path) -> std::io::Result<tokio::fs::File> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .await?;
    let len = f.metadata().await?.len();
    if len > 0 {
        f.seek(std::io::SeekFrom::Start(len - 1)).await?;
        if f.read_u8().await? != b'\n' {
            f.write_all(b"\n").await?;
        }
    }
    Ok(f)
}

/// The TLS handshake over `tcp`, trusting the certificates of `ca`.
async fn tls_connect(address: &str, ca: &Path, tcp: TcpStream) -> Result<Conn, SinkError> {
    let ca_err = |reason: String| SinkError::Ca {
        path: ca.into(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca).map_err(|e| ca_err(e.to_string()))?;
    for cert in certs {
        let cert = cert.map_err(|e| ca_err(e.to_string()))?;
        roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ca_err("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ca_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (host, _) = split_address(address).map_err(|e| ca_err(e.into()))?;
    let tls_err = |source| SinkError::Tls {
        address: address.into(),
        source,
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| tls_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let stream = tokio::time::timeout(
        TIMEOUT,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| tls_err(std::io::ErrorKind::TimedOut.into()))?
    .map_err(tls_err)?;
    Ok(Conn::Tls(Box::new(stream)))
}

impl Conn {
    /// The TCP socket under the connection.
    fn socket(&self) -> Option<RawFd> {
        match self {
            Conn::Tcp(s) => Some(s.as_raw_fd()),
            Conn::Tls(s) => Some(s.get_ref().0.as_raw_fd()),
            Conn::File(_) => None,
        }
    }

    /// Whether the connection is still established (a file always is).
    fn established(&self) -> bool {
        self.socket()
            .is_none_or(|fd| tcp_queue(fd).is_ok_and(|(established, _)| established))
    }

    /// Waits until the peer acknowledged every byte written.
    async fn acknowledged(&self, sink: &str) -> Result<(), SinkError> {
        let Some(fd) = self.socket() else {
            return Ok(());
        };
        let failed = |reason: String| SinkError::NotAcknowledged {
            sink: sink.into(),
            reason,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match tcp_queue(fd) {
                Err(e) => return Err(failed(e.to_string())),
                Ok((false, _)) => return Err(failed("the connection was closed".into())),
                Ok((true, 0)) => return Ok(()),
                Ok((true, queued)) if Instant::now() > deadline => {
                    return Err(failed(format!(
                        "{queued} bytes unacknowledged after {TIMEOUT:?}"
                    )));
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
}

/// Whether the TCP connection of `fd` is established, and how many bytes
/// its peer has not acknowledged yet.
fn tcp_queue(fd: RawFd) -> std::io::Result<(bool, usize)> {
    // SAFETY: tcp_info is plain data; all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, ours.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int into `queued`, ours.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &raw mut queued) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    const TCP_ESTABLISHED: u8 = 1;
    Ok((info.tcpi_state == TCP_ESTABLISHED, queued.max(0) as usize))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn labels() -> Labels {
        Labels {
            app: "web".into(),
            instance: "web-1".into(),
            container: "main".into(),
            node: "n1".into(),
        }
    }

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                time: "2026-12-02T19:20:03.000000001Z".into(),
                stream: "stdout",
                message: format!("line {i}").into_bytes(),
            })
            .collect()
    }

    /// The receiver reads a little of the first connection and resets
    /// it: the next batch goes on a new connection, after the one before
    /// it (which may have been lost unread) — both arrive there, whole.
    #[tokio::test]
    async fn a_reset_connection_is_replaced_and_the_last_batch_resent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let mut some = [0u8; 10];
            let _ = first.read(&mut some).await.unwrap();
            first.set_zero_linger().unwrap();
            drop(first);
            let (mut second, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            second.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut writer = SinkWriter::new(LogSink::Syslog {
            address,
            tls: false,
            ca_file: None,
        });
        let (one, two) = (records(50), records(20));
        let mut failures = 0;
        for batch in [&one, &two] {
            while let Err(e) = writer.send(&labels(), batch).await {
                failures += 1;
                assert!(failures < 5, "{}", proto::error_chain(&e));
            }
            // Time for the reset to arrive.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(writer);
        let got = server.await.unwrap();
        let mut expected = Vec::new();
        for r in one.iter().chain(&two) {
            format::syslog_frame(&mut expected, &labels(), r);
        }
        assert_eq!(
            got, expected,
            "the second connection got both batches, once"
        );
    }

    #[tokio::test]
    async fn file_sink_appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let mut writer = SinkWriter::new(LogSink::File { path: path.clone() });
        writer.send(&labels(), &records(2)).await.unwrap();
        writer.send(&labels(), &records(1)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["message"], "line 0");
        assert_eq!(lines[2]["instance"], "web-1");
        // A line cut by a crash is ended before the next batch.
        std::fs::write(&path, "{\"time\":\"cut").unwrap();
        let mut writer = SinkWriter::new(LogSink::File { path: path.clone() });
        writer.send(&labels(), &records(1)).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let (cut, next) = text.split_once('\n').unwrap();
        assert_eq!(cut, "{\"time\":\"cut");
        let next: serde_json::Value = serde_json::from_str(next.trim_end()).unwrap();
        assert_eq!(next["message"], "line 0");
    }

    /// A TLS receiver whose certificate (`localhost`, `127.0.0.1`) was
    /// issued by `testdata/ca.pem`; the key is a test key, nothing else.
    #[tokio::test]
    async fn syslog_over_tls_with_a_ca_file() {
        use tokio_rustls::TlsAcceptor;
        use tokio_rustls::rustls::ServerConfig;
        use tokio_rustls::rustls::pki_types::PrivateKeyDer;

        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/shipper/testdata");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(testdata.join("server.pem"))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_file(testdata.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut got = Vec::new();
            // The client goes away without close_notify: read what came.
            let _ = tls.read_to_end(&mut got).await;
            // The second client does not trust this certificate.
            let (tcp, _) = listener.accept().await.unwrap();
            assert!(acceptor.accept(tcp).await.is_err());
            got
        });
        let sink = |ca: &str| {
            SinkWriter::new(LogSink::Syslog {
                address: format!("127.0.0.1:{port}"),
                tls: true,
                ca_file: Some(testdata.join(ca)),
            })
        };
        let mut writer = sink("ca.pem");
        writer.send(&labels(), &records(3)).await.unwrap();
        drop(writer);
        // A CA that did not issue the certificate: refused.
        let err = sink("server.pem")
            .send(&labels(), &records(1))
            .await
            .unwrap_err();
        assert!(matches!(err, SinkError::Tls { .. }), "{err:?}");
        let got = server.await.unwrap();
        let mut expected = Vec::new();
        for r in &records(3) {
            format::syslog_frame(&mut expected, &labels(), r);
        }
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut writer = SinkWriter::new(LogSink::Syslog {
            address: format!("127.0.0.1:{port}"),
            tls: false,
            ca_file: None,
        });
        let err = writer.send(&labels(), &records(1)).await.unwrap_err();
        assert!(matches!(err, SinkError::Connect { .. }), "{err:?}");
    }
}
