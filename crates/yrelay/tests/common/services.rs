//! Private Redis and PostgreSQL servers for tests: real processes on free
//! ports in temp dirs, so tests can stop, kill and restart them. Never the
//! machine's shared services on the standard ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::WAIT;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Retries `ready` until it holds (services take a moment to accept).
pub(super) async fn wait_ready<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let attempt = async {
        while !ready().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(WAIT, attempt)
        .await
        .unwrap_or_else(|_| panic!("{what} did not become ready"));
}

pub(super) async fn redis_answers(port: u16) -> bool {
    redis_query(port, redis::cmd("PING")).await.is_some()
}

pub(super) async fn redis_query(port: u16, cmd: redis::Cmd) -> Option<String> {
    redis_query_as(port, cmd).await
}

/// `INFO replication` of the server on `port`.
pub(super) async fn replication(port: u16) -> Option<String> {
    let mut info = redis::cmd("INFO");
    info.arg("replication");
    redis_query(port, info).await
}

pub(super) async fn redis_query_as<T: redis::FromRedisValue>(
    port: u16,
    cmd: redis::Cmd,
) -> Option<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    cmd.query_async::<T>(&mut conn).await.ok()
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The primary's port, for a replica.
    primary: Option<u16>,
}

impl RedisServer {
    /// Starts redis-server with an append-only file (fsync always).
    pub async fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            primary: None,
        };
        server.spawn().await;
        server
    }

    /// Starts a replica of `primary` and waits until it is in sync.
    pub async fn start_replica_of(primary: &RedisServer) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            primary: Some(primary.port),
        };
        server.spawn().await;
        let port = server.port;
        wait_ready("redis replica", || async move {
            replication(port)
                .await
                .is_some_and(|i| i.contains("master_link_status:up"))
        })
        .await;
        server
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the process: a server that
    /// answers nothing, without closing its connections.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("running");
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
    }

    /// Runs one command on this server; `None` if it cannot.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        redis_query_as(self.port, cmd).await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(
                self.primary
                    .map(|p| vec!["--replicaof".into(), "127.0.0.1".into(), p.to_string()])
                    .unwrap_or_default(),
            )
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (install with: apt-get install redis-server)");
        self.child = Some(child);
        let port = self.port;
        wait_ready("redis", || redis_answers(port)).await;
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills and starts again on the same port; `keep_data` keeps the AOF.
    pub async fn restart(&mut self, keep_data: bool) {
        self.kill().await;
        if !keep_data {
            for entry in std::fs::read_dir(self.dir.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    std::fs::remove_dir_all(path).unwrap();
                } else {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        self.spawn().await;
    }
}

pub struct PostgresServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn postgres_bin() -> PathBuf {
    if let Ok(out) = std::process::Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !path.is_empty() {
            let resolved = std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(&path));
            return resolved.parent().unwrap().to_path_buf();
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL not installed (apt-get install postgresql)")
        .map(|e| e.unwrap().path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no initdb under /usr/lib/postgresql")
}

/// PostgreSQL refuses to run as root: run its programs as `postgres` then.
fn as_postgres(program: &Path) -> Command {
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PostgresServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = postgres_bin();
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
        let status = as_postgres(&bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-D"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .status()
            .await
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let mut server = Self {
            child: None,
            port: free_port(),
            dir,
            bin,
        };
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn spawn(&mut self) {
        let child = as_postgres(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(self.dir.path())
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("postgres");
        self.child = Some(child);
        let url = self.url();
        wait_ready("postgres", || {
            let url = url.clone();
            async move { sqlx::PgPool::connect(&url).await.is_ok() }
        })
        .await;
    }

    /// Fast shutdown (SIGINT), waiting for the exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.signal("-INT");
            let _ = tokio::time::timeout(WAIT, child.wait()).await;
            let _ = child.kill().await;
        }
    }

    pub async fn start_again(&mut self) {
        self.spawn().await;
    }
}

impl PostgresServer {
    /// Signals the postmaster itself (not the runuser wrapper).
    fn signal(&self, signal: &str) {
        let pidfile = self.dir.path().join("data").join("postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(pidfile)
            && let Some(pid) = text.lines().next()
        {
            let _ = std::process::Command::new("kill")
                .args([signal, pid.trim()])
                .status();
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.signal("-KILL");
    }
}
