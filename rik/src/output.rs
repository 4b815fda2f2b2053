//! Rendering helpers shared by the commands: aligned tables, kubectl-style
//! ages and JSON objects printed with their keys in a chosen order.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

/// Spaces between two columns (kubectl's tabwriter uses 3).
const COLUMN_GAP: usize = 3;

/// A text table: upper-case headers, left-aligned columns padded to the
/// widest cell, no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers (upper-cased).
    pub fn new<S: AsRef<str>>(headers: &[S]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.as_ref().to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells render empty, extra cells are dropped.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// The table as text, one line per row, each ending with `\n`.
    pub fn render(&self) -> String {
        let widths = self.widths();
        std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|row| line(row, &widths))
            .collect()
    }

    /// The width of each column: its widest cell, header included.
    pub fn widths(&self) -> Vec<usize> {
        (0..self.headers.len())
            .map(|i| {
                std::iter::once(&self.headers)
                    .chain(&self.rows)
                    .map(|row| cell(row, i).chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Cell `i` of a row, empty when missing; a newline or tab inside would
/// break the alignment.
fn cell(row: &[String], i: usize) -> String {
    row.get(i)
        .map(|c| c.replace(['\n', '\t'], " "))
        .unwrap_or_default()
}

/// One row as a line of a table whose columns have these `widths` (a
/// wider cell pushes the rest of its line right), ending with `\n`: for
/// rows printed one at a time under a table printed earlier.
pub fn line(row: &[String], widths: &[usize]) -> String {
    let columns = widths.len();
    let mut line = String::new();
    for (i, width) in widths.iter().enumerate() {
        let c = cell(row, i);
        line.push_str(&c);
        if i + 1 < columns {
            let pad = width.saturating_sub(c.chars().count()) + COLUMN_GAP;
            line.extend(std::iter::repeat_n(' ', pad));
        }
    }
    let mut out = line.trim_end().to_string();
    out.push('\n');
    out
}

/// Current time, Unix seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Age of something that happened at Unix second `then`, as of `now`;
/// `<unknown>` when `then` is not set.
pub fn age(then: i64, now: i64) -> String {
    if then <= 0 {
        return "<unknown>".to_string();
    }
    format_age(now - then)
}

/// A duration in seconds the way kubectl shows ages: `45s`, `12m`, `4h12m`,
/// `3d4h`, `400d`, `2y10d`. Precision drops as the duration grows.
pub fn format_age(secs: i64) -> String {
    if secs < -1 {
        // Clock skew between the scheduler and this machine.
        return "<invalid>".to_string();
    }
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    let with = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if secs < 60 * 2 {
        format!("{secs}s")
    } else if minutes < 10 {
        with(minutes, "m", secs % 60, "s")
    } else if minutes < 60 * 3 {
        format!("{minutes}m")
    } else if hours < 8 {
        with(hours, "h", minutes % 60, "m")
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        with(days, "d", hours % 24, "h")
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        with(days / 365, "y", days % 365, "d")
    } else {
        format!("{}y", days / 365)
    }
}

/// A JSON value whose objects keep their keys in insertion order
/// (`serde_json::Map` sorts them), so that output follows seed 004's layout.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    /// Any value, printed as `serde_json` does.
    Plain(Value),
    /// An object, keys in this order.
    Object(Vec<(String, Json)>),
    /// An array.
    Array(Vec<Json>),
}

impl Json {
    /// The object `map` with the keys of `order` first (those present), then
    /// the others alphabetically.
    pub fn ordered(mut map: Map<String, Value>, order: &[&str]) -> Self {
        let mut fields = Vec::with_capacity(map.len());
        for key in order {
            if let Some(v) = map.remove(*key) {
                fields.push((key.to_string(), Json::Plain(v)));
            }
        }
        fields.extend(map.into_iter().map(|(k, v)| (k, Json::Plain(v))));
        Json::Object(fields)
    }

    /// Pretty-printed, followed by a newline.
    pub fn to_pretty(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("JSON serializes");
        s.push('\n');
        s
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Plain(v) => v.serialize(serializer),
            Json::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Json::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ages_like_kubectl() {
        let cases = [
            (0, "0s"),
            (45, "45s"),
            (119, "119s"),
            (120, "2m"),
            (150, "2m30s"),
            (12 * 60 + 5, "12m"),
            (179 * 60, "179m"),
            (4 * 3600 + 12 * 60 + 7, "4h12m"),
            (5 * 3600, "5h"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (3 * 86400, "3d"),
            (400 * 86400, "400d"),
            ((2 * 365 + 10) * 86400, "2y10d"),
            (9 * 365 * 86400, "9y"),
            (-1, "0s"),
            (-5, "<invalid>"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_age(secs), want, "{secs}s");
        }
        assert_eq!(age(0, 100), "<unknown>");
        assert_eq!(age(55, 100), "45s");
    }

    #[test]
    fn table_pads_left_aligned_columns() {
        let mut t = Table::new(&["name", "status", "age"]);
        t.push(vec![
            "helloworld".into(),
            "Completed".into(),
            "4h12m".into(),
        ]);
        t.push(vec!["a".into(), "RUNNING".into(), "5s".into()]);
        assert_eq!(
            t.render(),
            "NAME         STATUS      AGE\n\
             helloworld   Completed   4h12m\n\
             a            RUNNING     5s\n"
        );
    }

    #[test]
    fn table_without_rows_and_ragged_rows() {
        let t = Table::new(&["NAME", "STATUS"]);
        assert_eq!(t.render(), "NAME   STATUS\n");
        let mut t = Table::new(&["A", "B", "C"]);
        t.push(vec!["x".into()]);
        t.push(vec!["1".into(), "2\n3".into(), "4".into(), "extra".into()]);
        assert_eq!(t.render(), "A   B     C\nx\n1   2 3   4\n");
    }

    #[test]
    fn ordered_json_keeps_the_given_order() {
        let map = json!({"z": 1, "b": 2, "appId": "x", "state": "RUNNING"});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let j = Json::ordered(map, &["appId", "state", "missing"]);
        assert_eq!(
            serde_json::to_string(&j).unwrap(),
            r#"{"appId":"x","state":"RUNNING","b":2,"z":1}"#
        );
        let arr = Json::Array(vec![j.clone(), Json::Plain(json!(null))]);
        assert_eq!(
            serde_json::to_string(&arr).unwrap(),
            r#"[{"appId":"x","state":"RUNNING","b":2,"z":1},null]"#
        );
    }
}
