//! `rik get events [--app NAME] [-w]`: the events of every app (or of one),
//! oldest first, like `kubectl get events`; with `-w`, then each new event
//! as it comes, until interrupted.
//!
//! The watch rides on the resumable app watch ([`AppWatch`]): each app
//! event carries the app's last events, and the ones already printed are
//! known by their instance's `(time, seq)`, so a resumed or relisted watch
//! prints nothing twice.

use std::collections::BTreeMap;
use std::io::Write;

use proto::rik::v1::watch_event::Type;
use proto::rik::v1::{App, Event};

use crate::commands::Scheduler;
use crate::commands::app_watch::{AppWatch, Update};
use crate::commands::describe::now_ms;
use crate::describe::{EVENT_HEADERS, event_row, events_table};
use crate::output::{Table, line};

/// Widths of the columns of rows printed after the header, at least
/// these (a wider cell pushes the rest of its line right).
const WATCH_WIDTHS: [usize; 4] = [5, 7, 9, 24];

/// The table of `rik get events` (`app` `None`: every app); empty when
/// there is no event.
pub async fn list(scheduler: &mut Scheduler, app: Option<&str>) -> anyhow::Result<String> {
    let apps = match app {
        Some(name) => vec![scheduler.get_app(name).await?],
        None => scheduler.list_apps().await?,
    };
    let events: Vec<Event> = apps.into_iter().flat_map(|a| a.events).collect();
    if events.is_empty() {
        return Ok(String::new());
    }
    Ok(events_table(&events, now_ms(), true))
}

/// Runs `rik get events -w`.
pub async fn watch(
    scheduler: &mut Scheduler,
    app: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut watch = AppWatch::new(scheduler, app);
    let mut printer = Printer::default();
    loop {
        let text = match watch.next().await? {
            Update::Listed { apps, .. } => printer.listed(&apps),
            Update::Changed(event) => match (event.r#type(), event.app) {
                (Type::Deleted, Some(app)) => {
                    printer.forget(&app.name);
                    String::new()
                }
                (_, Some(app)) => printer.fresh(&[app]),
                (_, None) => String::new(),
            },
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
}

/// What was printed so far.
#[derive(Debug, Default)]
struct Printer {
    /// Per app and instance, the `(time, seq)` of the last event printed.
    seen: BTreeMap<(String, String), (i64, u64)>,
    header: bool,
}

impl Printer {
    /// A listing: the header once, then the events not printed yet.
    fn listed(&mut self, apps: &[App]) -> String {
        let mut text = String::new();
        if !self.header {
            self.header = true;
            text = Table::new(EVENT_HEADERS).render();
        }
        text + &self.fresh(apps)
    }

    /// The events of `apps` not printed yet, oldest first.
    fn fresh(&mut self, apps: &[App]) -> String {
        let mut new: Vec<(&str, &Event)> = Vec::new();
        for app in apps {
            let mut last: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
            for e in &app.events {
                let key = (app.name.clone(), e.instance_id.clone());
                let seen = last
                    .get(e.instance_id.as_str())
                    .copied()
                    .or_else(|| self.seen.get(&key).copied())
                    .unwrap_or_default();
                if (e.time, e.seq) > seen {
                    last.insert(&e.instance_id, (e.time, e.seq));
                    new.push((&app.name, e));
                }
            }
        }
        new.sort_by_key(|(_, e)| (e.time, e.seq));
        let now = now_ms();
        let mut widths = WATCH_WIDTHS.to_vec();
        widths.push(0);
        let mut text = String::new();
        for (app, e) in new {
            self.seen
                .insert((app.to_string(), e.instance_id.clone()), (e.time, e.seq));
            text.push_str(&line(&event_row(e, now), &widths));
        }
        text
    }

    /// An app that is gone: its events go with it.
    fn forget(&mut self, app: &str) {
        self.seen.retain(|(a, _), _| a != app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(instance: &str, seq: u64, time: i64) -> Event {
        Event {
            instance_id: instance.into(),
            time,
            seq,
            r#type: "Normal".into(),
            reason: format!("R{seq}"),
            ..Event::default()
        }
    }

    #[test]
    fn each_event_is_printed_once_oldest_first() {
        let mut printer = Printer::default();
        let mut app = App {
            name: "web".into(),
            events: vec![event("web-1", 1, 10), event("web-2", 1, 5)],
            ..App::default()
        };
        let first = printer.listed(std::slice::from_ref(&app));
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 3, "{first}");
        assert!(lines[0].starts_with("AGE"));
        assert!(lines[1].contains("web-2") && lines[2].contains("web-1"));
        app.events.push(event("web-1", 2, 20));
        let next = printer.fresh(std::slice::from_ref(&app));
        assert_eq!(next.lines().count(), 1, "{next}");
        assert!(next.contains("R2"));
        assert_eq!(printer.fresh(std::slice::from_ref(&app)), "");
        // A relisting prints nothing twice; a deleted app is forgotten.
        assert_eq!(printer.listed(std::slice::from_ref(&app)), "");
        printer.forget("web");
        assert_eq!(printer.fresh(&[app]).lines().count(), 3);
    }
}
