//! How the day-2 commands (`authorize`, `status`) reach the cluster: the way kubectl does,
//! from KUBECONFIG (or `--kubeconfig`) and its current context, or the in-cluster config.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Connection flags shared by the kubectl-like commands.
#[derive(Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// A client for the chosen cluster and the namespace to work in.
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
}

impl KubeArgs {
    pub async fn connect(&self) -> anyhow::Result<Cluster> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .context("loading the kubeconfig")?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("loading kubeconfig context {context:?}"))?,
            (None, None) => kube::Config::infer().await.context(
                "no Kubernetes configuration found: set KUBECONFIG, pass --kubeconfig, or run inside a cluster",
            )?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).context("building the Kubernetes client")?;
        Ok(Cluster { client, namespace })
    }
}

/// The kubectl-like commands talk to a person: they log only when RUST_LOG asks for it.
pub fn init_logging(format: crate::logging::Format, level: Option<&str>) {
    if level.is_some() || std::env::var_os("RUST_LOG").is_some() {
        crate::logging::init(format, level);
    }
}
