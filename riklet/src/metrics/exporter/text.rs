//! Writes the exposition of the snapshot's families straight into a
//! string, in either format, byte for byte what `prometheus-client`
//! encodes (OpenMetrics) and what [`super::openmetrics_to_text`] makes of it
//! (text format 0.0.4).
//!
//! At 500 pods a scrape is about 10 000 series with the same four labels
//! per container. Through `prometheus-client` every series re-encoded its
//! labels through several `dyn Write` layers, and the text format was then
//! rewritten line by line; a scrape every second cost as much CPU as the
//! collection itself. Here each holder's labels are escaped and joined
//! once per scrape ([`LabelSets`]) and a series is a few string copies and
//! a number.

use std::fmt;

/// Which exposition format to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// OpenMetrics 1.0: `# UNIT` lines, counter families named without
    /// their `_total` suffix.
    OpenMetrics,
    /// Prometheus text 0.0.4: counter families named after their `_total`
    /// samples, no `# UNIT` lines.
    Text,
}

/// A family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A figure: integers stay integers in the exposition (`4096`, not
/// `4096.0`); floats as `prometheus-client` writes them (`dtoa`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Value {
    Integer(u64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(value: u64) -> Self {
        Value::Integer(value)
    }
}

impl From<f64> for Value {
    fn from(value: f64) -> Self {
        Value::Float(value)
    }
}

/// One family being written: its samples are named `name[_unit]` plus a
/// suffix.
pub(super) struct FamilyWriter<'a> {
    out: &'a mut String,
    /// `name[_unit]`.
    full: String,
}

/// Starts a family: writes its `# HELP`, `# TYPE` (and `# UNIT`) lines.
pub(super) fn family<'a>(
    out: &'a mut String,
    format: Format,
    name: &str,
    help: &str,
    unit: Option<&str>,
    kind: Kind,
) -> FamilyWriter<'a> {
    let mut full = String::with_capacity(name.len() + 8);
    full.push_str(name);
    if let Some(unit) = unit {
        full.push('_');
        full.push_str(unit);
    }
    let suffix = if format == Format::Text && kind == Kind::Counter {
        "_total"
    } else {
        ""
    };
    for line in ["# HELP ", "# TYPE "] {
        out.push_str(line);
        out.push_str(&full);
        out.push_str(suffix);
        out.push(' ');
        out.push_str(if line == "# HELP " {
            help
        } else {
            kind.as_str()
        });
        out.push('\n');
    }
    if let (Format::OpenMetrics, Some(unit)) = (format, unit) {
        out.push_str("# UNIT ");
        out.push_str(&full);
        out.push(' ');
        out.push_str(unit);
        out.push('\n');
    }
    FamilyWriter { out, full }
}

impl FamilyWriter<'_> {
    /// A counter sample: `name_total{labels} value`.
    pub(super) fn counter(&mut self, labels: &str, value: Value) {
        self.sample("_total", "", labels, |out| push_value(out, value));
    }

    /// A gauge sample: `name{labels} value`.
    pub(super) fn gauge(&mut self, labels: &str, value: Value) {
        self.sample("", "", labels, |out| push_value(out, value));
    }

    /// A histogram: `_sum`, `_count`, then a cumulative `_bucket` per
    /// `(le label, count in that bucket alone)`; the label (`le="…",`,
    /// first among the labels) comes formatted, as the bounds are the same
    /// for every series.
    pub(super) fn histogram<'b>(
        &mut self,
        labels: &str,
        sum: f64,
        count: u64,
        buckets: impl Iterator<Item = (&'b str, u64)>,
    ) {
        self.sample("_sum", "", labels, |out| {
            out.push_str(dtoa::Buffer::new().format(sum));
        });
        self.sample("_count", "", labels, |out| {
            out.push_str(itoa::Buffer::new().format(count));
        });
        let mut cumulative = 0;
        for (le, count) in buckets {
            cumulative += count;
            self.sample("_bucket", le, labels, |out| {
                out.push_str(itoa::Buffer::new().format(cumulative));
            });
        }
    }

    fn sample(&mut self, suffix: &str, first: &str, labels: &str, value: impl FnOnce(&mut String)) {
        let out = &mut *self.out;
        out.push_str(&self.full);
        out.push_str(suffix);
        out.push('{');
        out.push_str(first);
        out.push_str(labels);
        out.push_str("} ");
        value(out);
        out.push('\n');
    }
}

fn push_value(out: &mut String, value: Value) {
    match value {
        Value::Integer(v) => out.push_str(itoa::Buffer::new().format(v)),
        Value::Float(v) => out.push_str(dtoa::Buffer::new().format(v)),
    }
}

/// The label sets of a list of holders (containers, pods), each escaped
/// and joined once: `key="value",key="value"`.
pub(super) struct LabelSets {
    text: String,
    /// Where each holder's set ends in `text`.
    ends: Vec<usize>,
}

impl LabelSets {
    /// The sets of `holders`, each from `labels`.
    pub(super) fn new<'a, H: 'a, const N: usize>(
        holders: impl ExactSizeIterator<Item = &'a H>,
        labels: impl Fn(&'a H) -> [(&'static str, &'a str); N],
    ) -> Self {
        let mut sets = LabelSets {
            text: String::with_capacity(holders.len() * 64),
            ends: Vec::with_capacity(holders.len()),
        };
        for holder in holders {
            for (i, (key, value)) in labels(holder).into_iter().enumerate() {
                if i > 0 {
                    sets.text.push(',');
                }
                sets.text.push_str(key);
                sets.text.push_str("=\"");
                push_escaped(&mut sets.text, value);
                sets.text.push('"');
            }
            sets.ends.push(sets.text.len());
        }
        sets
    }

    /// The set of holder `index`.
    pub(super) fn get(&self, index: usize) -> &str {
        let start = index.checked_sub(1).map_or(0, |i| self.ends[i]);
        &self.text[start..self.ends[index]]
    }
}

/// A label value as the exposition escapes it: `\`, `"` and newlines.
fn push_escaped(out: &mut String, value: &str) {
    let mut last = 0;
    for (index, byte) in value.bytes().enumerate() {
        let escaped = match byte {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            b'\n' => "\\n",
            _ => continue,
        };
        out.push_str(&value[last..index]);
        out.push_str(escaped);
        last = index + 1;
    }
    out.push_str(&value[last..]);
}

impl fmt::Debug for LabelSets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries((0..self.ends.len()).map(|i| self.get(i)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_once_per_holder() {
        let holders = [("a\"b", "x\\y"), ("line\nbreak", "plain")];
        let sets = LabelSets::new(holders.iter(), |(a, b)| [("a", *a), ("b", *b)]);
        assert_eq!(sets.get(0), r#"a="a\"b",b="x\\y""#);
        assert_eq!(sets.get(1), r#"a="line\nbreak",b="plain""#);
    }

    #[test]
    fn both_formats_name_families_as_prometheus_client_and_text_do() {
        let mut om = String::new();
        let mut f = family(
            &mut om,
            Format::OpenMetrics,
            "x",
            "Help.",
            Some("seconds"),
            Kind::Counter,
        );
        f.counter("node=\"n\"", Value::Float(1.0));
        assert_eq!(
            om,
            "# HELP x_seconds Help.\n# TYPE x_seconds counter\n# UNIT x_seconds seconds\nx_seconds_total{node=\"n\"} 1.0\n"
        );
        let mut text = String::new();
        let mut f = family(&mut text, Format::Text, "x", "Help.", None, Kind::Counter);
        f.counter("node=\"n\"", Value::Integer(3));
        assert_eq!(
            text,
            "# HELP x_total Help.\n# TYPE x_total counter\nx_total{node=\"n\"} 3\n"
        );
    }
}
