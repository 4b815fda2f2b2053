//! containerd's content store: existence, small reads, streamed writes
//! that containerd verifies against the expected digest and size, labels.

use std::collections::HashMap;
use std::pin::Pin;

use bytes::Bytes;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    AbortRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest as UpdateContentRequest,
    WriteAction, WriteContentRequest, WriteContentResponse,
};
use containerd_client::types::Descriptor;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::documents::MAX_DOCUMENT;
use super::error::{ImageError, Result, containerd, found};
use super::{ImageStore, unique};

/// Bytes per content-store write message (containerd accepts 16 MiB).
const WRITE_CHUNK: usize = 1 << 20;

/// An open content-store write: requests go into `tx`, containerd's
/// answers come from `responses`.
struct Ingest {
    reference: String,
    tx: mpsc::Sender<WriteContentRequest>,
    responses: Streaming<WriteContentResponse>,
}

impl ImageStore {
    pub(super) async fn content_exists(&self, digest: &str) -> Result<bool> {
        let request = InfoRequest {
            digest: digest.to_string(),
        };
        let answer = ContentClient::new(self.channel.clone())
            .info(self.req(request, None))
            .await;
        found(answer, "content info", digest)
    }

    /// A small blob (manifest, config), `None` if absent.
    pub(super) async fn read_content(&self, name: &str, digest: &str) -> Result<Option<Vec<u8>>> {
        let request = ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        };
        let mut stream = match ContentClient::new(self.channel.clone())
            .read(self.req(request, None))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(containerd("read content", digest, s)),
        };
        let mut out = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    out.extend_from_slice(&m.data);
                    if out.len() as i64 > MAX_DOCUMENT {
                        return Err(ImageError::Corrupt {
                            reference: name.to_string(),
                            detail: format!("{digest} is larger than {MAX_DOCUMENT} bytes"),
                        });
                    }
                }
                Ok(None) => return Ok(Some(out)),
                Err(s) if s.code() == Code::NotFound => return Ok(None),
                Err(s) => return Err(containerd("read content", digest, s)),
            }
        }
    }

    /// Stores `data` as `desc`; if it is already stored, sets `labels` on it.
    pub(super) async fn write_bytes(
        &self,
        name: &str,
        lease: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        data: &[u8],
    ) -> Result<()> {
        if self.content_exists(&desc.digest).await? {
            let mut content = ContentClient::new(self.channel.clone());
            for (k, v) in &labels {
                self.set_label(&mut content, &desc.digest, k, v).await?;
            }
            return Ok(());
        }
        let bytes = Bytes::copy_from_slice(data);
        let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes)]);
        self.write_content(name, lease, desc, labels, stream).await
    }

    /// Streams a blob into the content store (Write: stat, writes, commit
    /// with the expected digest and size, which containerd verifies).
    pub(super) async fn write_content<S>(
        &self,
        name: &str,
        lease: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        data: S,
    ) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let mut client = ContentClient::new(self.channel.clone());
        let Some(mut ingest) = self.open_ingest(&mut client, lease, desc).await? else {
            return Ok(());
        };
        let result = self
            .send_data(name, desc, labels, std::pin::pin!(data), &mut ingest)
            .await;
        let Ingest { reference, tx, .. } = ingest;
        drop(tx);
        if result.is_err() {
            let abort = AbortRequest { r#ref: reference };
            let _ = client.abort(self.req(abort, Some(lease))).await;
        }
        result
    }

    /// Starts a write of `desc`; `None` if containerd has it already
    /// (written by someone else since we looked).
    async fn open_ingest(
        &self,
        client: &mut ContentClient<Channel>,
        lease: &str,
        desc: &Descriptor,
    ) -> Result<Option<Ingest>> {
        let reference = format!("riklet-{}-{}", desc.digest, unique());
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total: desc.size,
            expected: desc.digest.clone(),
            ..WriteContentRequest::default()
        };
        let _ = tx.send(stat).await;
        let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut responses = match client.write(self.req(requests, Some(lease))).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return Ok(None),
            Err(s) => return Err(containerd("write content", &desc.digest, s)),
        };
        match responses.message().await {
            Ok(Some(_)) => Ok(Some(Ingest {
                reference,
                tx,
                responses,
            })),
            Ok(None) => Err(stream_closed(desc)),
            Err(s) if s.code() == Code::AlreadyExists => Ok(None),
            Err(s) => Err(containerd("write content", &desc.digest, s)),
        }
    }

    /// Sends `data` in [`WRITE_CHUNK`] messages, the last one committing
    /// with `labels`.
    async fn send_data<S>(
        &self,
        name: &str,
        desc: &Descriptor,
        labels: HashMap<String, String>,
        mut data: Pin<&mut S>,
        ingest: &mut Ingest,
    ) -> Result<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let mut offset = 0i64;
        let mut buf = Vec::with_capacity(WRITE_CHUNK);
        loop {
            let last = match self.next_chunk(name, desc, &mut data).await? {
                Some(chunk) => {
                    buf.extend_from_slice(&chunk);
                    false
                }
                None => true,
            };
            if !last && buf.len() < WRITE_CHUNK {
                continue;
            }
            let len = buf.len() as i64;
            let action = if last {
                WriteAction::Commit
            } else {
                WriteAction::Write
            };
            let msg = WriteContentRequest {
                action: action as i32,
                offset,
                data: std::mem::replace(&mut buf, Vec::with_capacity(WRITE_CHUNK)),
                total: desc.size,
                expected: desc.digest.clone(),
                labels: if last { labels.clone() } else { HashMap::new() },
                ..WriteContentRequest::default()
            };
            ingest.tx.send(msg).await.map_err(|_| stream_closed(desc))?;
            offset += len;
            match ingest.responses.message().await {
                Ok(Some(r)) if last => return committed_as(name, desc, &r.digest),
                Ok(Some(_)) => {}
                Ok(None) => return Err(stream_closed(desc)),
                Err(s) if last && s.code() == Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(containerd("write content", &desc.digest, s)),
            }
        }
    }

    /// The next piece of a download, `None` at its end; a source silent
    /// for the registry timeout is an error.
    async fn next_chunk<S>(
        &self,
        name: &str,
        desc: &Descriptor,
        data: &mut Pin<&mut S>,
    ) -> Result<Option<Bytes>>
    where
        S: Stream<Item = std::io::Result<Bytes>>,
    {
        let failed = |source| ImageError::Download {
            reference: name.to_string(),
            digest: desc.digest.clone(),
            source,
        };
        match tokio::time::timeout(self.registry.timeout, data.next()).await {
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(source))) => Err(failed(source)),
            Ok(None) => Ok(None),
            Err(_) => Err(failed(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no data for {:?}", self.registry.timeout),
            ))),
        }
    }

    pub(super) async fn set_label(
        &self,
        content: &mut ContentClient<Channel>,
        digest: &str,
        key: &str,
        value: &str,
    ) -> Result<()> {
        let request = UpdateContentRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: HashMap::from([(key.to_string(), value.to_string())]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![format!("labels.{key}")],
            }),
        };
        content
            .update(self.req(request, None))
            .await
            .map(|_| ())
            .map_err(|s| containerd("label content", digest, s))
    }
}

/// containerd's write stream ended before the commit.
fn stream_closed(desc: &Descriptor) -> ImageError {
    containerd(
        "write content",
        &desc.digest,
        Status::unavailable("stream closed"),
    )
}

/// containerd verified the commit: the digest it stored must be ours.
fn committed_as(name: &str, desc: &Descriptor, stored: &str) -> Result<()> {
    if stored == desc.digest {
        Ok(())
    } else {
        Err(ImageError::Corrupt {
            reference: name.to_string(),
            detail: format!("{} stored as {stored}", desc.digest),
        })
    }
}
