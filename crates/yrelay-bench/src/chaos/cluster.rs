//! The processes under test (Redis, PostgreSQL on a disk that can be
//! filled, yrelay instances), each restartable, and the faults injected.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::{ChaosArgs, Rng};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A program run as `postgres` when we are root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn postgres_bin() -> Result<PathBuf, String> {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !found.is_empty() {
        let path = std::fs::canonicalize(&found).unwrap_or_else(|_| PathBuf::from(&found));
        return Ok(path.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL is not installed".to_string())?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().ok_or_else(|| "no initdb found".into())
}

/// Waits until `port` accepts connections.
async fn wait_port(port: u16, what: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            return Err(format!("{what} did not start"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The processes under test, each restartable.
pub(super) struct Cluster {
    dir: PathBuf,
    pub(super) yrelay: PathBuf,
    redis_port: u16,
    redis: Option<Child>,
    pg_bin: PathBuf,
    pg_port: u16,
    pg: Option<Child>,
    pub(super) ports: Vec<u16>,
    instances: Vec<Option<Child>>,
    /// The tmpfs under PostgreSQL's data, when this process may mount one.
    pub(super) disk: Option<PathBuf>,
}

impl Cluster {
    pub(super) async fn start(args: &ChaosArgs) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("yrelay-chaos-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let disk_dir = dir.join("pgdisk");
        std::fs::create_dir_all(&disk_dir).map_err(|e| e.to_string())?;
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}m", args.disk_mb),
                "tmpfs",
            ])
            .arg(&disk_dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("chaos: cannot mount a tmpfs (not root): the disk is never filled");
        }
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&disk_dir)
            .status();
        let pg_bin = postgres_bin()?;
        let status = as_postgres(&pg_bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(disk_dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map_err(|e| format!("initdb: {e}"))?;
        if !status.success() {
            return Err("initdb failed".into());
        }
        let mut cluster = Self {
            yrelay: args.yrelay.clone(),
            redis_port: free_port(),
            redis: None,
            pg_bin,
            pg_port: free_port(),
            pg: None,
            ports: (0..args.instances).map(|_| free_port()).collect(),
            instances: (0..args.instances).map(|_| None).collect(),
            disk: mounted.then_some(disk_dir),
            dir,
        };
        cluster.start_redis().await?;
        cluster.start_pg().await?;
        for i in 0..args.instances {
            cluster.start_instance(i).await?;
        }
        Ok(cluster)
    }

    pub(super) fn pg_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    pub(super) fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    pub(super) fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    async fn start_redis(&mut self) -> Result<(), String> {
        // appendfsync always: what Redis acknowledged survives its SIGKILL.
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.redis_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.redis = Some(child);
        wait_port(self.redis_port, "redis-server").await
    }

    async fn start_pg(&mut self) -> Result<(), String> {
        let data = self.dir.join("pgdisk").join("data");
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let child = as_postgres(&self.pg_bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.pg_port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-k", "/tmp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.pg = Some(child);
        wait_port(self.pg_port, "postgres").await
    }

    async fn start_instance(&mut self, i: usize) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join(format!("yrelay-{i}.log")))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.yrelay)
            .arg("serve")
            .args(["--listen", &self.addr(i), "--store", &self.pg_url()])
            .args(["--log", &self.redis_url(), "--compact-idle-secs", "0.5"])
            // The POST writers all come from this machine's address.
            .args(["--max-posts-per-sec", "1000000"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.yrelay.display()))?;
        self.instances[i] = Some(child);
        wait_port(self.ports[i], "yrelay").await
    }

    /// The postmaster's own pid (under `runuser` when root).
    fn pg_signal(&self, signal: &str) {
        let pidfile = self.dir.join("pgdisk").join("data").join("postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(pidfile)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
        {
            let _ = std::process::Command::new("kill")
                .args([signal, pid.trim()])
                .status();
        }
    }

    async fn stop_pg(&mut self) {
        self.pg_signal("-INT");
        if let Some(mut child) = self.pg.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
            let _ = child.kill().await;
        }
    }

    /// PostgreSQL stops by itself when it cannot write its WAL (a full disk).
    async fn pg_is_running(&mut self) -> bool {
        self.pg
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn fill(&self) {
        use std::io::Write;
        let Some(disk) = &self.disk else { return };
        if let Ok(mut filler) = std::fs::File::create(disk.join("filler")) {
            let chunk = vec![0u8; 1 << 16];
            while filler.write_all(&chunk).is_ok() {}
        }
    }

    fn free(&self) {
        if let Some(disk) = &self.disk {
            let _ = std::fs::remove_file(disk.join("filler"));
        }
    }

    /// Brings every process back (the end of a fault, and of the run).
    pub(super) async fn heal(&mut self) -> Result<(), String> {
        self.free();
        if self
            .redis
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
        {
            self.start_redis().await?;
        }
        if !self.pg_is_running().await {
            self.stop_pg().await;
            self.start_pg().await?;
        }
        for i in 0..self.instances.len() {
            let down = self.instances[i]
                .as_mut()
                .is_none_or(|c| c.try_wait().ok().flatten().is_some());
            if down {
                self.start_instance(i).await?;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.pg_signal("-KILL");
        if let Some(disk) = &self.disk {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(disk)
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Faults, one at a time, until `until`; returns what was done.
pub(super) async fn inject(
    cluster: &Arc<tokio::sync::Mutex<Cluster>>,
    rng: &mut Rng,
    until: Instant,
    started: Instant,
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(500, 2500)).await;
        let mut c = cluster.lock().await;
        let outage = rng.millis(300, 2500);
        let what = match rng.below(4) {
            0 => {
                let i = rng.below(c.instances.len() as u64) as usize;
                if let Some(mut child) = c.instances[i].take() {
                    let _ = child.kill().await;
                }
                format!("SIGKILL instance {i}")
            }
            1 => {
                if let Some(mut child) = c.redis.take() {
                    let _ = child.kill().await;
                }
                "SIGKILL Redis".to_string()
            }
            2 => {
                c.stop_pg().await;
                "stop PostgreSQL".to_string()
            }
            _ if c.disk.is_some() => {
                c.fill();
                "fill the store's disk".to_string()
            }
            _ => continue,
        };
        let line = format!(
            "{:6.1} s  {what} for {} ms",
            started.elapsed().as_secs_f64(),
            outage.as_millis()
        );
        eprintln!("chaos: {line}");
        done.push(line);
        drop(c);
        tokio::time::sleep(outage).await;
        cluster.lock().await.heal().await?;
    }
    Ok(done)
}
