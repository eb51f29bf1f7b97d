//! A private Redis Cluster for tests: redis-server processes on free ports
//! (and free bus ports), joined into a cluster, that tests can stop, kill,
//! restart and fail over.

use std::path::PathBuf;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::services::{
    free_port, redis_answers, redis_query, redis_query_as, replication, wait_ready,
};

/// A Redis Cluster of private redis-server processes.
pub struct RedisCluster {
    nodes: Vec<Option<Child>>,
    pub ports: Vec<u16>,
    /// Replicas per primary (then nodes fail over after 1 s unreachable).
    replicas: usize,
    _dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (port + 10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    /// Starts `n` primaries (append-only file, fsync always) and joins them.
    pub async fn start(n: usize) -> Self {
        Self::start_with_replicas(n, 0).await
    }

    /// Starts `n` primaries with `replicas` replicas each.
    pub async fn start_with_replicas(n: usize, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let count = n * (1 + replicas);
        let ports: Vec<u16> = (0..count).map(|_| free_cluster_port()).collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            ports,
            replicas,
            _dir: dir,
        };
        for i in 0..count {
            std::fs::create_dir(cluster.node_dir(i)).unwrap();
            let node = cluster.spawn_node(i).await;
            cluster.nodes.push(Some(node));
        }
        let created = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli (install with: apt-get install redis-tools)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_ok().await;
        if replicas > 0 {
            cluster.wait_replicas_linked().await;
        }
        cluster
    }

    /// Waits until every replica has its link to its primary up.
    async fn wait_replicas_linked(&self) {
        for port in &self.ports {
            let port = *port;
            wait_ready("redis cluster replica", || async move {
                replication(port).await.is_some_and(|i| {
                    i.contains("role:master") || i.contains("master_link_status:up")
                })
            })
            .await;
        }
    }

    /// Runs one command on node `i`; `None` if it cannot.
    pub async fn query_node<T: redis::FromRedisValue>(
        &self,
        i: usize,
        cmd: redis::Cmd,
    ) -> Option<T> {
        redis_query_as(self.ports[i], cmd).await
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self._dir.path().join(self.ports[i].to_string())
    }

    async fn spawn_node(&self, i: usize) -> Child {
        let port = self.ports[i];
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(if self.replicas > 0 {
                &["--cluster-node-timeout", "1000"][..]
            } else {
                &[]
            })
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.node_dir(i))
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (install with: apt-get install redis-server)");
        wait_ready("redis cluster node", || redis_answers(port)).await;
        child
    }

    /// Kills node `i` and starts it again with its data and cluster config.
    pub async fn restart_node(&mut self, i: usize) {
        self.kill_node(i).await;
        self.nodes[i] = Some(self.spawn_node(i).await);
        self.wait_ok().await;
        if self.replicas > 0 {
            self.wait_replicas_linked().await;
        }
    }

    /// Kills node `i` (SIGKILL) and leaves it down.
    pub async fn kill_node(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            let _ = node.kill().await;
        }
    }

    /// The index of the primary that holds `key` (asked of every live node).
    pub async fn primary_of(&self, key: &str) -> usize {
        for (i, port) in self.ports.iter().enumerate() {
            let primary = replication(*port)
                .await
                .is_some_and(|i| i.contains("role:master"));
            let mut exists = redis::cmd("EXISTS");
            exists.arg(key);
            // A primary that does not hold the key's slot answers MOVED.
            if primary && redis_query_as::<i64>(*port, exists).await.is_some() {
                return i;
            }
        }
        panic!("no primary holds {key}");
    }

    /// Waits until a replica of the (dead) node `i` has taken over as primary.
    pub async fn wait_failover_of(&self, i: usize) {
        let dead = self.ports[i];
        for port in self.ports.iter().filter(|p| **p != dead) {
            let replicated_dead = replication(*port)
                .await
                .is_some_and(|i| i.contains(&format!("master_port:{dead}")));
            if replicated_dead {
                let port = *port;
                wait_ready("redis cluster failover", || async move {
                    replication(port)
                        .await
                        .is_some_and(|i| i.contains("role:master"))
                })
                .await;
                return;
            }
        }
        panic!("node {i} has no replica");
    }

    /// Waits until every (live) node says the cluster is ok.
    async fn wait_ok(&self) {
        for (port, _) in self
            .ports
            .iter()
            .zip(&self.nodes)
            .filter(|(_, n)| n.is_some())
        {
            let port = *port;
            wait_ready("redis cluster", || async move {
                let mut info = redis::cmd("CLUSTER");
                info.arg("INFO");
                redis_query(port, info)
                    .await
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            })
            .await;
        }
    }

    /// One node's URL (yrelay finds the others).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    /// Every node's URL, comma-separated (the seed list form).
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        urls.join(",")
    }
}
