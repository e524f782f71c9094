//! `status`: the day-2 view, like cert-manager's `cmctl status`. Without a name, a table of
//! credentials (one namespace or all); with one, that credential in depth. The exit code is
//! non-zero when any credential shown is not Ready, so that it can gate a pipeline.

mod detail;
mod row;
mod table;
pub(crate) mod when;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

use crate::crd::EagleEyeCredential;
use crate::kubectl::KubeArgs;

pub use detail::{Detail, SecretInfo, SecretState, TargetSecretInfo};
pub use row::Row;

/// Exit code when at least one credential shown is not Ready (errors exit with 1).
pub const NOT_READY_EXIT: u8 = 3;

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Show this credential in depth; without it, a table of all credentials.
    pub name: Option<String>,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// List credentials in all namespaces.
    #[arg(short = 'A', long, conflicts_with = "name")]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Flag refresh tokens that die within this, besides those the operator flags with its
    /// ReloginSoon condition (set by its own --relogin-warning).
    #[arg(long, default_value = "7d", value_parser = duration)]
    pub relogin_warning: SignedDuration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns (or the detail view), for people.
    Table,
    /// JSON, for scripts.
    Json,
}

fn duration(s: &str) -> Result<SignedDuration, String> {
    crate::crd::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as 12h or 7d"))
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let cluster = args.kube.connect().await?;
    let now = Timestamp::now();
    let all_ready = match &args.name {
        Some(name) => {
            let detail = fetch_detail(
                &cluster.client,
                &cluster.namespace,
                name,
                now,
                args.relogin_warning,
            )
            .await?;
            match args.output {
                Output::Table => print!("{}", detail.render(now)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&detail)?),
            }
            detail.row.ready
        }
        None => {
            let api: Api<EagleEyeCredential> = if args.all_namespaces {
                Api::all(cluster.client.clone())
            } else {
                Api::namespaced(cluster.client.clone(), &cluster.namespace)
            };
            let where_ = if args.all_namespaces {
                "any namespace".to_owned()
            } else {
                format!("namespace {:?}", cluster.namespace)
            };
            let mut list = api
                .list(&ListParams::default())
                .await
                .with_context(|| format!("listing EagleEyeCredentials in {where_}"))?
                .items;
            list.sort_by(|a, b| {
                (&a.metadata.namespace, &a.metadata.name)
                    .cmp(&(&b.metadata.namespace, &b.metadata.name))
            });
            let rows: Vec<Row> = list
                .iter()
                .map(|cr| Row::new(cr, now, args.relogin_warning))
                .collect();
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "items": rows,
                        "allReady": rows.iter().all(|r| r.ready),
                    }))?
                ),
                Output::Table if rows.is_empty() => {
                    eprintln!("No EagleEyeCredentials found in {where_}.");
                }
                Output::Table => print!(
                    "{}",
                    table::render(&rows, now, args.all_namespaces, args.relogin_warning)
                ),
            }
            rows.iter().all(|r| r.ready)
        }
    };
    Ok(if all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_READY_EXIT)
    })
}

/// Reads the credential, its events and the Secrets it names. A Secret or event list the
/// person may not read is reported as such instead of failing the command.
pub async fn fetch_detail(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    now: Timestamp,
    warning: SignedDuration,
) -> anyhow::Result<Detail> {
    let credentials: Api<EagleEyeCredential> = Api::namespaced(client.clone(), namespace);
    let cr = credentials
        .get_opt(name)
        .await
        .with_context(|| format!("reading EagleEyeCredential {name:?} in namespace {namespace:?}"))?
        .with_context(|| {
            format!("EagleEyeCredential {name:?} not found in namespace {namespace:?}")
        })?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let read = |name: String| {
        let secrets = secrets.clone();
        async move { secrets.get_opt(&name).await.map_err(drop) }
    };
    let spec = &cr.spec;
    let target_name = crate::target::target_name(&cr);
    let target = read(target_name.clone()).await;
    let refresh = read(spec.refresh_token_secret_ref.name.clone()).await;
    let client_secret = read(spec.client_secret_ref.name.clone()).await;
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let events = events
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let conditions = cr
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .map(|c| detail::ConditionLine {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
            last_transition_time: c.last_transition_time.0,
        })
        .collect();
    Ok(Detail {
        history: detail::history_of(&cr),
        row: Row::new(&cr, now, warning),
        conditions,
        events: detail::event_lines(&cr, &events),
        target_secret: detail::target_info(&cr, &target_name, &target, now),
        refresh_token_secret: detail::secret_info(
            &spec.refresh_token_secret_ref.name,
            &refresh,
            &[spec.refresh_token_secret_ref.key.as_str()],
            true,
        ),
        client_secret: detail::secret_info(
            &spec.client_secret_ref.name,
            &client_secret,
            &[
                spec.client_secret_ref.client_id_key.as_str(),
                spec.client_secret_ref.client_secret_key.as_str(),
            ],
            false,
        ),
    })
}
