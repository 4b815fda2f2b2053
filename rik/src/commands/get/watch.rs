//! `rik get apps -w`, `rik get app NAME -w`: the listing, then one line per
//! change, like `kubectl get -w`, until interrupted.
//!
//! - Table (`-o wide` too): the table of `rik get apps` once, then a row
//!   per change that shows in its columns (a change the columns do not show
//!   prints nothing), aligned under it. A deleted app is printed with its
//!   last state and the status `DELETED`.
//! - `-o json`: one JSON object per line, `{"type", "revision", "app"}`,
//!   `type` one of `ADDED`, `MODIFIED`, `DELETED` and `app` as `rik get apps
//!   -o json` prints each app (as `rik get app NAME -o json` prints it when
//!   one app is watched); `{"type": "SYNCED", "revision"}` ends each
//!   listing.
//! - While the scheduler is away nothing is printed; the watch resumes from
//!   the last revision read. When it cannot (the scheduler lost that part
//!   of its history), it lists again, says so on stderr, and prints the
//!   differences with what it printed before as changes.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::bail;
use proto::rik::v1::watch_event::Type;
use proto::rik::v1::{App, WatchEvent};

use super::Format;
use crate::commands::Scheduler;
use crate::commands::app_watch::{AppWatch, Update};
use crate::output::{self, Json, Table, now_unix};
use crate::views;

/// Index of the AGE column, which changes without the app changing.
const AGE_COLUMN: usize = 2;

/// Runs `rik get apps -w` (`name` `None`) or `rik get app NAME -w`.
pub async fn run(
    scheduler: &mut Scheduler,
    name: Option<&str>,
    format: Option<Format>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut watch = AppWatch::new(scheduler, name);
    let mut printer = Printer::new(format, name);
    loop {
        match watch.next().await? {
            Update::Listed {
                apps,
                revision,
                resync,
            } => {
                if let Some(why) = resync {
                    eprintln!("rik: the watch could not resume, listing again: {why}");
                }
                printer.listed(apps, revision, out)?;
            }
            Update::Changed(event) => printer.changed(&event, out)?,
        }
        out.flush()?;
    }
}

/// What was printed so far, to print the next lines.
#[derive(Debug)]
struct Printer {
    format: Option<Format>,
    /// The one app watched, if one.
    one: Option<String>,
    /// The last state printed of each app.
    known: BTreeMap<String, App>,
    /// The last row printed of each app, without its AGE.
    rows: BTreeMap<String, Vec<String>>,
    /// Column widths, once the header is printed.
    widths: Option<Vec<usize>>,
    listed: bool,
}

impl Printer {
    fn new(format: Option<Format>, one: Option<&str>) -> Self {
        Self {
            format,
            one: one.map(str::to_string),
            known: BTreeMap::new(),
            rows: BTreeMap::new(),
            widths: None,
            listed: false,
        }
    }

    fn wide(&self) -> bool {
        self.format == Some(Format::Wide)
    }

    /// A listing: printed in full the first time; after a resync, its
    /// differences with what was printed.
    fn listed(&mut self, apps: Vec<App>, revision: u64, out: &mut dyn Write) -> anyhow::Result<()> {
        if !self.listed {
            self.listed = true;
            if let Some(name) = &self.one
                && !apps.iter().any(|a| &a.name == name)
            {
                bail!("app {name} not found");
            }
            if self.format != Some(Format::Json) {
                return self.table(apps, out);
            }
            for app in &apps {
                self.print(Type::Added, revision, app, out)?;
            }
        } else {
            let listed: BTreeMap<String, App> =
                apps.into_iter().map(|a| (a.name.clone(), a)).collect();
            let gone: Vec<App> = self
                .known
                .values()
                .filter(|a| !listed.contains_key(&a.name))
                .cloned()
                .collect();
            for app in &gone {
                self.print(Type::Deleted, revision, app, out)?;
            }
            for (name, app) in &listed {
                match self.known.get(name) {
                    None => self.print(Type::Added, revision, app, out)?,
                    Some(known) if known != app => {
                        self.print(Type::Modified, revision, app, out)?
                    }
                    Some(_) => {}
                }
            }
        }
        if self.format == Some(Format::Json) {
            out.write_all(json_line(Type::Synced, revision, None).as_bytes())?;
        }
        Ok(())
    }

    /// The first listing as a table.
    fn table(&mut self, apps: Vec<App>, out: &mut dyn Write) -> anyhow::Result<()> {
        if apps.is_empty() {
            eprintln!("No resources found.");
            return Ok(());
        }
        let now = now_unix();
        let mut table = Table::new(views::app_headers(self.wide()));
        for app in apps {
            let row = views::app_row(&app, self.wide(), now);
            self.rows.insert(app.name.clone(), without_age(&row));
            table.push(row);
            self.known.insert(app.name.clone(), app);
        }
        self.widths = Some(table.widths());
        out.write_all(table.render().as_bytes())?;
        Ok(())
    }

    fn changed(&mut self, event: &WatchEvent, out: &mut dyn Write) -> anyhow::Result<()> {
        let Some(app) = &event.app else {
            return Ok(());
        };
        let kind = event.r#type();
        // A delete replayed after a reconnect names the app only: its
        // last state is the one printed.
        let app = match self.known.get(&app.name) {
            Some(known) if kind == Type::Deleted && app.definition.is_empty() => known.clone(),
            _ => app.clone(),
        };
        self.print(kind, event.revision, &app, out)
    }

    fn print(
        &mut self,
        kind: Type,
        revision: u64,
        app: &App,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        if kind == Type::Deleted {
            self.known.remove(&app.name);
        } else {
            self.known.insert(app.name.clone(), app.clone());
        }
        if self.format == Some(Format::Json) {
            let json = if self.one.is_some() {
                views::app_instances_json(app)
            } else {
                views::app_json(app)
            };
            out.write_all(json_line(kind, revision, Some(json)).as_bytes())?;
            return Ok(());
        }
        let mut row = views::app_row(app, self.wide(), now_unix());
        if kind == Type::Deleted {
            row[1] = "DELETED".to_string();
            self.rows.remove(&app.name);
        } else {
            let shown = without_age(&row);
            if self.rows.get(&app.name) == Some(&shown) {
                return Ok(());
            }
            self.rows.insert(app.name.clone(), shown);
        }
        if self.widths.is_none() {
            let header: Vec<String> = views::app_headers(self.wide())
                .iter()
                .map(|h| h.to_string())
                .collect();
            let mut widths = Table::new(&header).widths();
            grow(&mut widths, &row);
            out.write_all(output::line(&header, &widths).as_bytes())?;
            self.widths = Some(widths);
        }
        let widths = self.widths.get_or_insert_default();
        grow(widths, &row);
        out.write_all(output::line(&row, widths).as_bytes())?;
        Ok(())
    }
}

/// Widens the columns that `row` does not fit in.
fn grow(widths: &mut [usize], row: &[String]) {
    for (w, cell) in widths.iter_mut().zip(row) {
        *w = (*w).max(cell.chars().count());
    }
}

fn without_age(row: &[String]) -> Vec<String> {
    let mut row = row.to_vec();
    if row.len() > AGE_COLUMN {
        row.remove(AGE_COLUMN);
    }
    row
}

/// One line of `-o json -w`.
fn json_line(kind: Type, revision: u64, app: Option<Json>) -> String {
    let mut fields = vec![
        ("type".to_string(), Json::Plain(kind.as_str_name().into())),
        ("revision".to_string(), Json::Plain(revision.into())),
    ];
    fields.extend(app.map(|a| ("app".to_string(), a)));
    let mut line = serde_json::to_string(&Json::Object(fields)).expect("JSON serializes");
    line.push('\n');
    line
}
