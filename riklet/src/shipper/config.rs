//! `[[logs.sinks]]`: where the shipper sends pod log records. The shipper
//! runs when at least one sink is configured.

use std::path::PathBuf;

use serde::Deserialize;

/// One `[[logs.sinks]]` table, chosen by its `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum LogSink {
    /// RFC 5424 messages over TCP, octet-counting framing (RFC 6587).
    Syslog {
        /// `HOST:PORT` (`[v6]:PORT` for an IPv6 address).
        address: String,
        /// TLS (rustls) to the receiver; its certificate must chain to
        /// `ca_file` and name `HOST`.
        #[serde(default)]
        tls: bool,
        /// PEM file of the CA certificates trusted with `tls = true`.
        #[serde(default)]
        ca_file: Option<PathBuf>,
    },
    /// JSON lines appended to a local file, for a local collector.
    File { path: PathBuf },
}

/// A sink setting that cannot be used; `field` is its full key
/// (`logs.sinks[0].address`).
#[derive(Debug, thiserror::Error)]
#[error("config: {field}: {reason}")]
pub struct SinkConfigError {
    pub field: String,
    pub reason: String,
}

impl LogSink {
    /// How metrics and logs name the sink: `syslog://HOST:PORT`,
    /// `syslog+tls://HOST:PORT` or `file:PATH`. Also the key of its
    /// checkpoint, so that a sink keeps its place across restarts as long
    /// as it is configured the same.
    pub fn name(&self) -> String {
        match self {
            LogSink::Syslog {
                address, tls: true, ..
            } => format!("syslog+tls://{address}"),
            LogSink::Syslog { address, .. } => format!("syslog://{address}"),
            LogSink::File { path } => format!("file:{}", path.display()),
        }
    }

    /// Checks what serde cannot; `index` is the table's place in
    /// `[[logs.sinks]]`, for the key named in the error.
    pub fn validate(&self, index: usize) -> Result<(), SinkConfigError> {
        let err = |key: &str, reason: String| SinkConfigError {
            field: format!("logs.sinks[{index}].{key}"),
            reason,
        };
        match self {
            LogSink::Syslog {
                address,
                tls,
                ca_file,
            } => {
                split_address(address)
                    .map_err(|why| err("address", format!("{address:?}: {why}")))?;
                match (tls, ca_file) {
                    (false, Some(_)) => Err(err("ca_file", "is only used with tls = true".into())),
                    (true, None) => Err(err("ca_file", "is required with tls = true".into())),
                    (true, Some(p)) if !p.is_absolute() => Err(err(
                        "ca_file",
                        format!("{} must be an absolute path", p.display()),
                    )),
                    _ => Ok(()),
                }
            }
            LogSink::File { path } if !path.is_absolute() => Err(err(
                "path",
                format!("{} must be an absolute path", path.display()),
            )),
            LogSink::File { .. } => Ok(()),
        }
    }
}

/// Checks every sink, and that no two are the same (they would share a
/// checkpoint).
pub fn validate_sinks(sinks: &[LogSink]) -> Result<(), SinkConfigError> {
    for (i, sink) in sinks.iter().enumerate() {
        sink.validate(i)?;
        if let Some(first) = sinks[..i].iter().position(|s| s.name() == sink.name()) {
            return Err(SinkConfigError {
                field: format!("logs.sinks[{i}]"),
                reason: format!("{} is also logs.sinks[{first}]", sink.name()),
            });
        }
    }
    Ok(())
}

/// `(host, port)` of `HOST:PORT` or `[v6]:PORT`.
pub fn split_address(address: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = address.rsplit_once(':').ok_or("expected HOST:PORT")?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or("unclosed [ in the host")?,
        None if host.contains(':') => return Err("an IPv6 host must be written [ADDRESS]:PORT"),
        None => host,
    };
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
        return Err("expected HOST:PORT with a host name or address");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host, p)),
        _ => Err("the port must be a number from 1 to 65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Logs {
        sinks: Vec<LogSink>,
    }

    fn parse(text: &str) -> Result<Vec<LogSink>, String> {
        toml::from_str::<Logs>(text)
            .map(|l| l.sinks)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn kinds_and_names() {
        let sinks = parse(
            "[[sinks]]\nkind = \"syslog\"\naddress = \"127.0.0.1:6514\"\n\
             [[sinks]]\nkind = \"syslog\"\naddress = \"logs.example:6514\"\ntls = true\nca_file = \"/etc/ca.pem\"\n\
             [[sinks]]\nkind = \"file\"\npath = \"/var/log/riklet-pods.json\"\n",
        )
        .unwrap();
        assert_eq!(sinks[0].name(), "syslog://127.0.0.1:6514");
        assert_eq!(sinks[1].name(), "syslog+tls://logs.example:6514");
        assert_eq!(sinks[2].name(), "file:/var/log/riklet-pods.json");
        for (i, s) in sinks.iter().enumerate() {
            s.validate(i).unwrap();
        }
        assert_eq!(split_address("[::1]:514"), Ok(("::1", 514)));
    }

    #[test]
    fn bad_sinks_name_the_key() {
        let err = parse("[[sinks]]\nkind = \"kafka\"\n").unwrap_err();
        assert!(err.contains("kafka"), "{err}");
        let err = parse("[[sinks]]\nkind = \"file\"\npath = \"/x\"\nport = 1\n").unwrap_err();
        assert!(err.contains("port"), "{err}");
        for (text, field) in [
            (
                "kind = \"syslog\"\naddress = \"nohost\"",
                "logs.sinks[0].address",
            ),
            (
                "kind = \"syslog\"\naddress = \"h:0\"",
                "logs.sinks[0].address",
            ),
            (
                "kind = \"syslog\"\naddress = \"::1:514\"",
                "logs.sinks[0].address",
            ),
            (
                "kind = \"syslog\"\naddress = \"h:514\"\ntls = true",
                "logs.sinks[0].ca_file",
            ),
            (
                "kind = \"syslog\"\naddress = \"h:514\"\nca_file = \"/ca.pem\"",
                "logs.sinks[0].ca_file",
            ),
            ("kind = \"file\"\npath = \"rel.json\"", "logs.sinks[0].path"),
        ] {
            let sinks = parse(&format!("[[sinks]]\n{text}\n")).unwrap();
            let err = validate_sinks(&sinks).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let twice = parse("[[sinks]]\nkind = \"file\"\npath = \"/x\"\n[[sinks]]\nkind = \"file\"\npath = \"/x\"\n")
            .unwrap();
        let err = validate_sinks(&twice).unwrap_err().to_string();
        assert!(
            err.contains("logs.sinks[1]") && err.contains("logs.sinks[0]"),
            "{err}"
        );
    }
}
