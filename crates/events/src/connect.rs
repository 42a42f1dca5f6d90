//! Finding a Kubernetes API client, or deciding there is none.
//!
//! The node plugin must run both in a cluster (service account) and on a developer's machine
//! (kubeconfig) and, in the demo and the tests, with no Kubernetes at all. "No Kubernetes" is not
//! an error: the caller logs [`EVENTS_DISABLED`] once and uses a [`NullSink`](crate::NullSink). A
//! configuration that exists but is broken *is* an error, loudly, because events silently vanishing
//! is how the Go driver failed (incident 8).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};
use tokio::task::JoinHandle;

use crate::event::{EventSink, NullSink};
use crate::kube_sink::{KubeSink, KubeSinkConfig};
use crate::stats::SinkStats;

/// The one line to log when no Kubernetes configuration exists.
pub const EVENTS_DISABLED: &str = "Kubernetes Events disabled: no in-cluster config or kubeconfig";

/// The parts of the process environment that decide where the client config comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientEnv {
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` are both set (running in a pod).
    pub in_cluster: bool,
    /// `KUBECONFIG`, when set and non-empty.
    pub kubeconfig: Option<OsString>,
    /// The user's home directory, for `~/.kube/config`.
    pub home: Option<PathBuf>,
}

impl ClientEnv {
    /// Reads the environment of this process.
    pub fn from_process() -> Self {
        let set = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        Self {
            in_cluster: set("KUBERNETES_SERVICE_HOST").is_some()
                && set("KUBERNETES_SERVICE_PORT").is_some(),
            kubeconfig: set("KUBECONFIG"),
            home: set("HOME").map(PathBuf::from),
        }
    }
}

/// Where the client configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A kubeconfig file named on the command line.
    Explicit(PathBuf),
    /// The pod's service account.
    InCluster,
    /// `KUBECONFIG` (possibly a list) or `~/.kube/config`, through kube's own loader.
    Kubeconfig,
    /// Nothing: events are disabled.
    None,
}

/// Picks the source (pure): an explicit path wins, then in-cluster, then `KUBECONFIG`, then
/// `~/.kube/config` when `exists` says the file is there.
pub fn choose_source(
    explicit: Option<&Path>,
    env: &ClientEnv,
    exists: impl Fn(&Path) -> bool,
) -> ConfigSource {
    if let Some(p) = explicit {
        return ConfigSource::Explicit(p.to_owned());
    }
    if env.in_cluster {
        return ConfigSource::InCluster;
    }
    if env.kubeconfig.is_some() {
        return ConfigSource::Kubeconfig;
    }
    match &env.home {
        Some(home) if exists(&home.join(".kube").join("config")) => ConfigSource::Kubeconfig,
        _ => ConfigSource::None,
    }
}

/// A configuration was found but could not be turned into a client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig named on the command line could not be read or used.
    #[error("kubeconfig {path} is unusable")]
    ExplicitKubeconfig {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: KubeconfigError,
    },
    /// `KUBECONFIG` or `~/.kube/config` could not be read or used.
    #[error("kubeconfig from KUBECONFIG or ~/.kube/config is unusable")]
    Kubeconfig(#[source] KubeconfigError),
    /// Running in a pod, but the service account config is missing or broken.
    #[error("in-cluster configuration is unusable")]
    InCluster(#[source] InClusterError),
    /// The configuration could not be turned into a client (TLS setup, proxy, …).
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
}

/// A client from `source`, or `None` for [`ConfigSource::None`].
pub async fn connect_with(source: &ConfigSource) -> Result<Option<Client>, ConnectError> {
    let config = match source {
        ConfigSource::None => return Ok(None),
        ConfigSource::Explicit(path) => {
            let wrap = |source| ConnectError::ExplicitKubeconfig {
                path: path.clone(),
                source,
            };
            let kc = Kubeconfig::read_from(path).map_err(wrap)?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(wrap)?
        }
        ConfigSource::InCluster => Config::incluster().map_err(ConnectError::InCluster)?,
        ConfigSource::Kubeconfig => Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(ConnectError::Kubeconfig)?,
    };
    Client::try_from(config)
        .map(Some)
        .map_err(ConnectError::Client)
}

/// A client from the explicit kubeconfig, the in-cluster config, `KUBECONFIG` or `~/.kube/config`,
/// in that order; `Ok(None)` when none of them exists.
pub async fn connect(kubeconfig: Option<PathBuf>) -> Result<Option<Client>, ConnectError> {
    let source = choose_source(
        kubeconfig.as_deref(),
        &ClientEnv::from_process(),
        Path::exists,
    );
    tracing::debug!(?source, "Kubernetes client configuration source");
    connect_with(&source).await
}

/// What [`start`] hands back: the sink to give to the monitor and the CSI handlers, its counters,
/// the client (for eviction), and the background task (await it at shutdown after dropping `sink`).
pub struct Events {
    /// A [`KubeSink`] or, when Kubernetes is absent, a [`NullSink`].
    pub sink: Arc<dyn EventSink>,
    /// Counters (all zero forever with the null sink).
    pub stats: Arc<SinkStats>,
    /// The client, when there is one.
    pub client: Option<Client>,
    /// The sink's background task, when there is one.
    pub task: Option<JoinHandle<()>>,
}

/// Connects and starts a [`KubeSink`], or logs [`EVENTS_DISABLED`] once and returns a
/// [`NullSink`]. Must run inside a Tokio runtime.
pub async fn start(
    kubeconfig: Option<PathBuf>,
    config: KubeSinkConfig,
) -> Result<Events, ConnectError> {
    match connect(kubeconfig).await? {
        Some(client) => {
            let (sink, task) = KubeSink::spawn(client.clone(), config);
            Ok(Events {
                stats: sink.stats(),
                sink: Arc::new(sink),
                client: Some(client),
                task: Some(task),
            })
        }
        None => {
            tracing::info!("{EVENTS_DISABLED}");
            Ok(Events {
                sink: Arc::new(NullSink),
                stats: Arc::new(SinkStats::default()),
                client: None,
                task: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(in_cluster: bool, kubeconfig: Option<&str>, home: Option<&str>) -> ClientEnv {
        ClientEnv {
            in_cluster,
            kubeconfig: kubeconfig.map(Into::into),
            home: home.map(Into::into),
        }
    }

    #[test]
    fn explicit_path_wins_over_everything() {
        let s = choose_source(
            Some(Path::new("/etc/kc")),
            &env(true, Some("/k"), Some("/root")),
            |_| true,
        );
        assert_eq!(s, ConfigSource::Explicit("/etc/kc".into()));
    }

    #[test]
    fn in_cluster_wins_over_kubeconfig() {
        let s = choose_source(None, &env(true, Some("/k"), Some("/root")), |_| true);
        assert_eq!(s, ConfigSource::InCluster, "a pod uses its service account");
    }

    #[test]
    fn kubeconfig_env_is_used_outside_a_cluster() {
        let s = choose_source(None, &env(false, Some("/k"), None), |_| false);
        assert_eq!(s, ConfigSource::Kubeconfig);
    }

    #[test]
    fn home_kubeconfig_is_used_only_when_the_file_exists() {
        let e = env(false, None, Some("/home/u"));
        assert_eq!(
            choose_source(None, &e, |p| p == Path::new("/home/u/.kube/config")),
            ConfigSource::Kubeconfig
        );
        assert_eq!(choose_source(None, &e, |_| false), ConfigSource::None);
    }

    #[test]
    fn nothing_configured_means_events_disabled() {
        assert_eq!(
            choose_source(None, &env(false, None, None), |_| true),
            ConfigSource::None
        );
    }

    #[tokio::test]
    async fn no_source_connects_to_nothing() {
        let c = connect_with(&ConfigSource::None).await;
        assert!(
            matches!(c, Ok(None)),
            "ConfigSource::None must yield Ok(None)"
        );
    }

    #[tokio::test]
    async fn missing_explicit_kubeconfig_is_an_error_not_silence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent");
        let Err(err) = connect_with(&ConfigSource::Explicit(path.clone())).await else {
            panic!("an explicit kubeconfig that does not exist must be an error");
        };
        assert!(
            matches!(&err, ConnectError::ExplicitKubeconfig { path: p, .. } if *p == path),
            "expected ExplicitKubeconfig for {path:?}, got {err:?}"
        );
    }

    #[tokio::test]
    async fn explicit_kubeconfig_file_yields_a_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
             clusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {token: abc}}]\n\
             contexts: [{name: t, context: {cluster: c, user: u, namespace: ns}}]\n",
        )
        .expect("write kubeconfig");
        let client = match connect_with(&ConfigSource::Explicit(path)).await {
            Ok(Some(c)) => c,
            Ok(None) => panic!("a valid kubeconfig must yield a client"),
            Err(e) => panic!("a valid kubeconfig must connect: {e:?}"),
        };
        assert_eq!(
            client.default_namespace(),
            "ns",
            "context namespace must be used"
        );
    }
}
