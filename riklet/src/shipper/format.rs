//! How a record is written for each kind of sink: an RFC 5424 syslog
//! message framed by octet counting (RFC 6587), or one JSON object per
//! line.

use serde::Serialize;

use super::record::Record;

/// Who wrote a record: the labels added to each of its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    pub app: String,
    pub instance: String,
    pub container: String,
    pub node: String,
}

/// SD-ID of the labels' structured data element. 32473 is the private
/// enterprise number reserved for examples and documentation (RFC 5612):
/// the project has no number of its own.
pub const SD_ID: &str = "rik@32473";

/// Facility `user` (1); severity `info` (6) for stdout, `err` (3) for
/// stderr.
fn priority(stream: &str) -> u8 {
    8 + if stream == "stderr" { 3 } else { 6 }
}

/// Appends one RFC 5424 message, framed as `<length> <message>` (RFC 6587
/// octet counting, so that a message may hold any byte, newlines too).
///
/// `<PRI>1 TIMESTAMP NODE APP INSTANCE STREAM [rik@32473 app=… instance=…
/// container=… node=… stream=…] MESSAGE`: the header fields are cut to
/// their RFC lengths (the structured data keeps the whole values), the
/// time to microseconds (RFC 5424 allows 6 fraction digits), `-` when the
/// line had no CRI time. The message is the line's bytes as written (MSG-
/// ANY, no BOM).
pub fn syslog_frame(out: &mut Vec<u8>, labels: &Labels, record: &Record) {
    let mut msg = Vec::with_capacity(160 + record.message.len());
    msg.extend_from_slice(
        format!(
            "<{}>1 {} {} {} {} {} [{SD_ID}",
            priority(record.stream),
            syslog_time(&record.time),
            header_field(&labels.node, 255),
            header_field(&labels.app, 48),
            header_field(&labels.instance, 128),
            header_field(record.stream, 32),
        )
        .as_bytes(),
    );
    for (name, value) in [
        ("app", labels.app.as_str()),
        ("instance", labels.instance.as_str()),
        ("container", labels.container.as_str()),
        ("node", labels.node.as_str()),
        ("stream", record.stream),
    ] {
        msg.extend_from_slice(format!(" {name}=\"{}\"", escape_param(value)).as_bytes());
    }
    msg.extend_from_slice(b"] ");
    msg.extend_from_slice(&record.message);
    out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
    out.extend_from_slice(&msg);
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// characters, `-` (NILVALUE) when empty.
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

/// A PARAM-VALUE: `"`, `\` and `]` escaped with a backslash.
fn escape_param(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The CRI time in UTC with microseconds, or `-`.
fn syslog_time(cri: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(cri).map_or_else(
        |_| "-".into(),
        |t| {
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
        },
    )
}

/// The object of one JSON line.
#[derive(Serialize)]
struct JsonRecord<'a> {
    time: &'a str,
    app: &'a str,
    instance: &'a str,
    container: &'a str,
    node: &'a str,
    stream: &'a str,
    /// Not-UTF-8 bytes become U+FFFD: JSON strings are Unicode.
    message: std::borrow::Cow<'a, str>,
}

/// Appends one JSON object and a newline:
/// `{"time","app","instance","container","node","stream","message"}`.
pub fn json_line(out: &mut Vec<u8>, labels: &Labels, record: &Record) {
    let object = JsonRecord {
        time: &record.time,
        app: &labels.app,
        instance: &labels.instance,
        container: &labels.container,
        node: &labels.node,
        stream: record.stream,
        message: String::from_utf8_lossy(&record.message),
    };
    serde_json::to_writer(&mut *out, &object).expect("serializing to memory cannot fail");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            app: "web".into(),
            instance: "web-x1".into(),
            container: "main".into(),
            node: "n1".into(),
        }
    }

    fn record(stream: &'static str, message: &[u8]) -> Record {
        Record {
            time: "2026-12-02T19:20:03.123456789Z".into(),
            stream,
            message: message.to_vec(),
        }
    }

    #[test]
    fn rfc5424_octet_counted() {
        let mut out = Vec::new();
        syslog_frame(&mut out, &labels(), &record("stdout", b"hello 1"));
        let text = String::from_utf8(out).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<14>1 2026-12-02T19:20:03.123456Z n1 web web-x1 stdout \
             [rik@32473 app=\"web\" instance=\"web-x1\" container=\"main\" node=\"n1\" stream=\"stdout\"] hello 1"
        );
        let mut out = Vec::new();
        let mut r = record("stderr", "é\n".as_bytes());
        r.time = "garbage".into();
        syslog_frame(&mut out, &labels(), &r);
        let text = String::from_utf8(out).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        // The length counts octets, not characters.
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.starts_with("<11>1 - n1 web"), "{msg}");
    }

    #[test]
    fn structured_data_escaping_and_header_limits() {
        assert_eq!(escape_param(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(header_field("", 10), "-");
        assert_eq!(header_field("a b", 10), "ab");
        assert_eq!(header_field(&"x".repeat(60), 48).len(), 48);
        let mut l = labels();
        l.container = "we]ird\"".into();
        let mut out = Vec::new();
        syslog_frame(&mut out, &l, &record("stdout", b"m"));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#"container="we\]ird\"""#), "{text}");
    }

    #[test]
    fn json_line_shape() {
        let mut out = Vec::new();
        json_line(&mut out, &labels(), &record("stderr", b"say \"hi\"\xff"));
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "2026-12-02T19:20:03.123456789Z",
                "app": "web", "instance": "web-x1", "container": "main",
                "node": "n1", "stream": "stderr", "message": "say \"hi\"\u{fffd}",
            })
        );
    }
}
