//! `rik top [--sort cpu|memory]`: pods by CPU and memory use, as last
//! reported by their riklets (kubectl top pods).

use std::io::Write;

use proto::status::AppStatus;

use super::Scheduler;
use crate::output::Table;

/// Shows every running pod with its CPU and memory use, heaviest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  rik top
  rik top --sort memory")]
pub struct Args {
    /// Order by `cpu` (default) or `memory`.
    #[arg(long, value_enum, default_value = "cpu")]
    sort: SortBy,
}

/// Column `rik top` sorts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Cpu,
    Memory,
}

/// One pod's figures.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    instance: String,
    app: String,
    node: String,
    cores: Option<f64>,
    working_set: Option<u64>,
    rx: Option<u64>,
    tx: Option<u64>,
}

fn row(app: &str, instance: &str, node: &str, status: &AppStatus) -> Row {
    Row {
        instance: instance.to_string(),
        app: app.to_string(),
        node: node.to_string(),
        cores: status.cpu.and_then(|c| c.usage_cores),
        working_set: status.memory.and_then(|m| m.working_set_bytes),
        rx: status.network.and_then(|n| n.rx_bytes),
        tx: status.network.and_then(|n| n.tx_bytes),
    }
}

fn sort(rows: &mut [Row], by: SortBy) {
    rows.sort_by(|a, b| match by {
        SortBy::Cpu => b.cores.unwrap_or(-1.0).total_cmp(&a.cores.unwrap_or(-1.0)),
        SortBy::Memory => b.working_set.cmp(&a.working_set),
    });
}

fn render(rows: &[Row]) -> String {
    let mut t = Table::new(&[
        "INSTANCE",
        "APP",
        "NODE",
        "CPU(cores)",
        "MEMORY(MiB)",
        "NET-RX",
        "NET-TX",
    ]);
    let dash = || "-".to_string();
    for r in rows {
        t.push(vec![
            r.instance.clone(),
            r.app.clone(),
            r.node.clone(),
            r.cores.map(|c| format!("{c:.3}")).unwrap_or_else(dash),
            r.working_set
                .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64))
                .unwrap_or_else(dash),
            r.rx.map(human_bytes).unwrap_or_else(dash),
            r.tx.map(human_bytes).unwrap_or_else(dash),
        ]);
    }
    t.render()
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Runs `rik top`.
pub async fn run(args: Args, scheduler: &mut Scheduler, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut rows: Vec<Row> = scheduler
        .list_apps()
        .await?
        .iter()
        .flat_map(|app| {
            app.instances
                .iter()
                .filter(|i| i.status == "RUNNING")
                .map(|i| {
                    row(
                        &app.name,
                        &i.instance_id,
                        &i.node,
                        &AppStatus::from_json(&i.metrics),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if rows.is_empty() {
        eprintln!("No running pods.");
        return Ok(());
    }
    sort(&mut rows, args.sort);
    out.write_all(render(&rows).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn metrics(cores: f64, ws: u64) -> AppStatus {
        AppStatus::from_json(
            &json!({"cpu": {"usageCores": cores}, "memory": {"workingSetBytes": ws}, "network": {"rxBytes": 2048, "txBytes": 10}})
                .to_string(),
        )
    }

    #[test]
    fn sorts_by_cpu_or_memory_and_renders() {
        let mut rows = vec![
            row("a", "a-1", "n1", &metrics(0.5, 10 << 20)),
            row("b", "b-1", "n1", &metrics(1.5, 1 << 20)),
            row("c", "c-1", "n2", &AppStatus::default()),
        ];
        sort(&mut rows, SortBy::Cpu);
        assert_eq!(
            rows.iter().map(|r| r.instance.as_str()).collect::<Vec<_>>(),
            ["b-1", "a-1", "c-1"]
        );
        sort(&mut rows, SortBy::Memory);
        assert_eq!(rows[0].instance, "a-1");
        let text = render(&rows);
        assert!(text.starts_with("INSTANCE"), "{text}");
        assert!(
            text.contains("10.0") && text.contains("2.0KiB") && text.contains("1.500"),
            "{text}"
        );
        assert!(text.lines().last().unwrap().contains('-'), "{text}");
    }
}
