//! Connections to one Redis server or a cluster.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisFuture, Value};
use yrelay_protocol::DocAddress;

use crate::log::LogError;

use super::TIMEOUT;
pub(super) fn key(addr: &DocAddress, part: &str) -> String {
    format!("yrelay:{{{addr}}}:{part}")
}

pub(super) fn unavailable(e: redis::RedisError) -> LogError {
    LogError::Unavailable(e.to_string())
}

/// A connection to one Redis server or to a cluster (which routes each
/// command to the node of its key's slot).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Runs a keyless command (such as `WAIT`) on the node that holds `key`;
    /// a cluster client would send it to every primary.
    pub(super) async fn on_node_of(&mut self, key: &str, cmd: Cmd) -> redis::RedisResult<Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let node = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(node));
                c.route_command(cmd, routing).await
            }
        }
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the log lives: the seed URLs and whether they form a cluster.
pub(super) struct Target {
    pub(super) seeds: Vec<String>,
    pub(super) cluster: bool,
}

impl Target {
    pub(super) async fn detect(setting: &str) -> Result<Self, LogError> {
        let seeds: Vec<String> = setting.split(',').map(|s| s.trim().to_string()).collect();
        if seeds.len() > 1 {
            return Ok(Self {
                seeds,
                cluster: true,
            });
        }
        let client = redis::Client::open(seeds[0].as_str()).map_err(unavailable)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(unavailable)?;
        let info: String = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Self {
            seeds,
            cluster: info.contains("cluster_enabled:1"),
        })
    }

    /// A connection whose requests time out after `response_timeout`.
    pub(super) async fn connect(&self, response_timeout: Duration) -> Result<Conn, LogError> {
        if self.cluster {
            let client = ClusterClient::builder(self.seeds.clone())
                .connection_timeout(TIMEOUT)
                .response_timeout(response_timeout)
                .build()
                .map_err(unavailable)?;
            let conn = client.get_async_connection().await.map_err(unavailable)?;
            return Ok(Conn::Cluster(conn));
        }
        let client = redis::Client::open(self.seeds[0].as_str()).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(Conn::Single(conn))
    }
}
