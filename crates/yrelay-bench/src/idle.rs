//! Scenario `idle`: C connections held open while the server's memory and
//! CPU are read from /proc.

use std::time::Duration;

use yrelay_client::WsClient;
use yrs::Doc;

use crate::{IdleArgs, nanos};

/// C idle connections over D documents; the server's memory and CPU (from
/// /proc of `--server-pid`) once they are all synced and again after `hold`.
pub(crate) async fn idle(args: IdleArgs) -> Result<(), String> {
    let before = proc_stats(args.server_pid)?;
    eprintln!(
        "idle: opening {} connections over {} docs",
        args.connections, args.docs
    );
    let run = nanos();
    let mut clients = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let url = args
            .url
            .replace("{room}", &format!("idle-{run}-{}", i % args.docs.max(1)));
        let client = WsClient::connect(&url, Doc::new())
            .await
            .map_err(|e| e.to_string())?;
        client
            .wait_synced(Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        clients.push(client);
        if args.connections >= 10 && (i + 1) % (args.connections / 10) == 0 {
            eprintln!("  {}/{} connected", i + 1, args.connections);
        }
    }
    let synced = proc_stats(args.server_pid)?;
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let held = proc_stats(args.server_pid)?;
    let cpu = (held.cpu_seconds - synced.cpu_seconds) / args.hold.max(0.001);
    let result = serde_json::json!({
        "scenario": "idle",
        "connections": args.connections,
        "docs": args.docs,
        "rss_mb_before": before.rss_kb as f64 / 1024.0,
        "rss_mb": held.rss_kb as f64 / 1024.0,
        "rss_kb_per_connection": (held.rss_kb.saturating_sub(before.rss_kb)) as f64 / args.connections.max(1) as f64,
        "idle_cpu_percent": cpu * 100.0,
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "idle: {} connections over {} docs: server RSS {:.1} MB (from {:.1} MB; {:.1} KB per connection); CPU while idle for {:.0} s: {:.1}%",
            args.connections,
            args.docs,
            held.rss_kb as f64 / 1024.0,
            before.rss_kb as f64 / 1024.0,
            result["rss_kb_per_connection"].as_f64().unwrap_or(0.0),
            args.hold,
            cpu * 100.0
        );
    }
    drop(clients);
    Ok(())
}

pub(crate) struct ProcStats {
    pub rss_kb: u64,
    pub cpu_seconds: f64,
}

/// Resident memory and CPU time used so far, from /proc/PID.
pub(crate) fn proc_stats(pid: u32) -> Result<ProcStats, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces) : utime is the 14th field overall.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    Ok(ProcStats {
        rss_kb,
        cpu_seconds: ticks / 100.0,
    })
}
