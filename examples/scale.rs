//! `cargo run --release --example scale -- --n 100,1000 [--quick] [flags]`: what the operator
//! costs at N credentials, each figure next to a floor measured in the same run (issue 10).
//! Build the operator binary first (`cargo build --release --bin eagle-eye-operator`): the
//! benchmark runs the real binary, found next to its own executable.
//!
//! It starts one local control plane (etcd, kube-apiserver, kube-controller-manager) and, per
//! N, three namespaces, each with an auth stand-in of its own (plain http, so the operator gets
//! `--allow-insecure-http`):
//!
//! - `floor`: a minimal kube client in this process does, per credential and at
//!   `--concurrency`, what the operator must: one token call, the refresh-token write-back
//!   (PUT), the target Secret (server-side apply, the operator's own `target::build`) and the
//!   status (server-side apply). Once after creating the credential's client Secret,
//!   refresh-token Secret and EagleEyeCredential (the floor of "apply → all Ready"), once more
//!   on the objects as they stand (the floor of a cold start).
//! - `cold`: one-hour access tokens. N credentials are created while no operator runs (all
//!   due), then one replica starts: cold start until all Ready, peak RSS. Then a window in
//!   which nothing is due (API requests while idle), single credentials created one at a
//!   time (apply → Ready p50/p99), and `--unrelated-secrets` Secrets the operator has no
//!   business with (RSS again).
//! - `live`: `--access-ttl-secs` tokens. One replica runs first; N credentials are created
//!   (apply → all Ready). Once every credential has refreshed on its own schedule, a
//!   `--steady-secs` window: API requests per refresh, by verb and resource, and the seconds
//!   any target Secret held a token that was expired or no longer live at the stand-in
//!   (sampled every 250 ms). Then the replica is restarted: token calls in the first
//!   `--burst-secs` against the steady rate. Then a second replica: SIGTERM handover and
//!   SIGKILL failover, each until the other replica holds the Lease.
//!
//! API requests come from kube-apiserver's own `apiserver_request_total` (`/metrics`),
//! differenced over a window. The metric has no client label: kube-apiserver's own requests
//! (its identity Lease in kube-system) and kube-controller-manager's are in it too, so a
//! `--background-secs` window with no operator running is measured first and shown beside.
//! The benchmark itself sends nothing during the windows (its watches are open before).
//! RSS and peak RSS are the operator process's VmRSS and VmHWM from /proc.
//!
//! `--quick` (CI, N = 100 in about three minutes on 2 cores) shortens the windows and token
//! lifetimes; flags given explicitly still win. Every wait is bounded.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio::task::JoinHandle;

use eagle_eye_operator::crd::EagleEyeCredential;
use eagle_eye_operator::secrets::{LOGIN_TIME, fingerprint, opaque};
use eagle_eye_operator::target::{self, Publication};
use eagle_eye_testbed::ControlPlane;
use eagle_eye_testbed::standin::{ClientRegistration, StandIn, StandInConfig};

const LEASE: &str = "eagle-eye-operator";
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const FLOOR_MANAGER: &str = "scale-floor";
/// The label `--shards` splits credentials by.
const SHARD_LABEL: &str = "eagle-eye-operator.io/shard";
/// The server-side timeout kube-runtime's watches ask for (kube-core's `WatchParams`
/// default): each watch is re-opened this often however quiet the cluster.
const WATCH_TIMEOUT: Duration = Duration::from_secs(290);

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
enum Phase {
    Floor,
    Cold,
    Idle,
    Singles,
    Unrelated,
    Apply,
    Steady,
    Burst,
    Handover,
}

/// Scale and cost of the operator at N credentials, each next to a floor measured in the same
/// run; prints one table per N.
#[derive(Parser, Debug)]
#[command(name = "scale")]
struct Args {
    /// Credential counts, comma-separated: one table each.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    n: Vec<usize>,
    /// Short windows and tokens for CI (N = 100 in about 3 minutes). Explicit flags win.
    #[arg(long)]
    quick: bool,
    /// The operator binary to run [default: `eagle-eye-operator` in this program's target
    /// profile directory]. CI runs a debug build of this benchmark against the release
    /// operator, which is what the figures are about.
    #[arg(long)]
    operator: Option<PathBuf>,
    /// Operator shards for the cold start (and the idle window after it): the credentials
    /// are labelled round-robin `eagle-eye-operator.io/shard=s0…`, and one process runs per
    /// shard with `--credential-selector`. Each shard's figures are shown, and its goals
    /// checked for its own share of N.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Phases to run, comma-separated. `idle`, `singles` and `unrelated` need the cold start
    /// (run whenever any of them is chosen); `steady`, `burst` and `handover` need `apply`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "floor,cold,idle,singles,unrelated,apply,steady,burst,handover"
    )]
    phases: Vec<Phase>,
    /// Writes in flight at once: the floor's concurrency, the benchmark's own creates, and the
    /// operator's `--max-concurrent-refreshes`.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Access-token lifetime in the `live` namespace [default: 60; --quick: 30].
    #[arg(long)]
    access_ttl_secs: Option<u64>,
    /// Steady-state window: requests per refresh, expired-token seconds [default: 120;
    /// --quick: 30]. The issue's expiry figure wants 1800 at N = 1000.
    #[arg(long)]
    steady_secs: Option<u64>,
    /// Window in which nothing is due [default: 120; --quick: 10].
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Window with no operator running, for the requests kube-apiserver and
    /// kube-controller-manager send by themselves [default: 30; --quick: 10].
    #[arg(long)]
    background_secs: Option<u64>,
    /// Restart burst: token calls counted this long after the restart [default: 60;
    /// --quick: 10].
    #[arg(long)]
    burst_secs: Option<u64>,
    /// Single credentials created one at a time for apply → Ready [default: 50; --quick: 10].
    #[arg(long)]
    singles: Option<usize>,
    /// Unrelated Secrets added in the watched namespace [default: 10000; --quick: 2000].
    #[arg(long)]
    unrelated_secrets: Option<usize>,
    /// Bound on every wait for all Ready, in seconds.
    #[arg(long, default_value_t = 900)]
    ready_timeout_secs: u64,
    /// Keep the operator logs (their directory is printed at the start).
    #[arg(long)]
    keep_logs: bool,
    /// RUST_LOG for the operator processes (e.g. `info,kube=debug` to see every request).
    #[arg(long, default_value = "info")]
    operator_log: String,
}

#[derive(Clone, Debug)]
struct Plan {
    concurrency: usize,
    access_ttl: Duration,
    steady: Duration,
    idle: Duration,
    background: Duration,
    burst: Duration,
    singles: usize,
    unrelated: usize,
    ready_timeout: Duration,
    phases: Vec<Phase>,
    operator_log: String,
    shards: usize,
}

impl Plan {
    fn from_args(a: &Args) -> Result<Plan> {
        let q = a.quick;
        let secs = |v: Option<u64>, full: u64, quick: u64| {
            Duration::from_secs(v.unwrap_or(if q { quick } else { full }))
        };
        let plan = Plan {
            concurrency: a.concurrency,
            access_ttl: secs(a.access_ttl_secs, 60, 30),
            steady: secs(a.steady_secs, 120, 30),
            idle: secs(a.idle_secs, 120, 10),
            background: secs(a.background_secs, 30, 10),
            burst: secs(a.burst_secs, 60, 10),
            singles: a.singles.unwrap_or(if q { 10 } else { 50 }),
            unrelated: a
                .unrelated_secrets
                .unwrap_or(if q { 2_000 } else { 10_000 }),
            ready_timeout: Duration::from_secs(a.ready_timeout_secs),
            phases: a.phases.clone(),
            operator_log: a.operator_log.clone(),
            shards: a.shards,
        };
        if plan.shards == 0 {
            bail!("--shards must be at least 1");
        }
        if plan.shards > 1
            && plan
                .phases
                .iter()
                .any(|p| !matches!(p, Phase::Floor | Phase::Cold | Phase::Idle))
        {
            bail!("--shards runs the phases floor, cold and idle only (--phases floor,cold,idle)");
        }
        if plan.concurrency == 0 {
            bail!("--concurrency must be at least 1");
        }
        if plan.access_ttl < Duration::from_secs(6) {
            bail!("--access-ttl-secs must be at least 6");
        }
        if a.n.is_empty() || a.n.contains(&0) {
            bail!("--n takes credential counts of at least 1");
        }
        Ok(plan)
    }

    fn has(&self, p: Phase) -> bool {
        self.phases.contains(&p)
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

static T0: OnceLock<Instant> = OnceLock::new();

fn t0() -> Instant {
    *T0.get_or_init(Instant::now)
}

fn say(who: &str, msg: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "[{:>7.1}s] {who:<8} {msg}",
        t0().elapsed().as_secs_f64()
    );
    let _ = out.flush();
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn s(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
    }
}

/// `x`, or 0 when below: a figure less its background prints "0", never "-0" (`f64::max`
/// may keep the sign of a negative zero).
fn non_negative(x: f64) -> f64 {
    if x > 0.0 { x } else { 0.0 }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The operator binary beside this example's own executable (`target/<profile>/examples/`).
fn operator_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(bin) = given {
        if !bin.is_file() {
            bail!("--operator {} is not a file", bin.display());
        }
        return Ok(bin.to_owned());
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("this program is not in target/<profile>/examples")?;
    let bin = profile_dir.join("eagle-eye-operator");
    if !bin.is_file() {
        bail!(
            "the operator binary {} is missing: build it first with `cargo build --release --bin eagle-eye-operator`",
            bin.display()
        );
    }
    Ok(bin)
}

/// VmRSS and VmHWM of a process, in KiB.
fn rss(pid: u32) -> Option<(u64, u64)> {
    let [rss, hwm] = status_kib(pid, ["VmRSS:", "VmHWM:"])?;
    Some((rss, hwm))
}

/// CPU time a process has used (user and system), from /proc.
fn cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, which may hold spaces): state is field 3,
    // utime and stime fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // SAFETY: sysconf only reads a configuration value.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()?
        .max(1);
    let total = ticks(11)? + ticks(12)?;
    Some(Duration::from_millis(total * 1000 / hz))
}

/// What a process's RSS is made of, in KiB: memory it allocated (heap, stacks: RssAnon)
/// and the pages of its binary and libraries mapped in (RssFile, shared with the page
/// cache; the kernel maps whole neighbourhoods of a page touched).
fn rss_split(pid: u32) -> Option<(u64, u64)> {
    let [anon, file] = status_kib(pid, ["RssAnon:", "RssFile:"])?;
    Some((anon, file))
}

fn status_kib<const K: usize>(pid: u32, names: [&str; K]) -> Option<[u64; K]> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    };
    let mut out = [0; K];
    for (o, name) in out.iter_mut().zip(names) {
        *o = field(name)?;
    }
    Some(out)
}

/// Rows of what the RSS is made of at N, and the marginal memory per credential against
/// `empty` (RSS and RssAnon of the same process leading with no credential).
fn memory_rows(table: &mut Table, when: &str, pid: u32, n: usize, empty: (u64, u64)) {
    let (Some((rss_now, _)), Some((anon, file))) = (rss(pid), rss_split(pid)) else {
        return;
    };
    table.row(
        format!("RSS {when}: anonymous (heap, stacks) / file-backed (binary, libraries)"),
        format!("{} / {}", mib(anon), mib(file)),
        format!("anonymous with no credential: {}", mib(empty.1)),
    );
    let per = |now: u64, before: u64| now.saturating_sub(before) as f64 / n.max(1) as f64;
    table.row(
        format!("marginal memory per credential, {when}"),
        format!("{:.1} KiB", per(rss_now, empty.0)),
        format!(
            "(RSS − RSS with no credential) / N; anonymous alone {:.1} KiB",
            per(anon, empty.1)
        ),
    );
}

/// Polls `probe` every `every` until it yields, at most `limit`.
async fn wait_until<T, F, Fut>(limit: Duration, every: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

async fn create_namespace(client: &kube::Client, ns: &str) -> Result<()> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    Ok(())
}

/// Deletes a namespace and waits (bounded) until it is gone, so that the namespace
/// controller's work does not land in a later window.
async fn delete_namespace(client: &kube::Client, ns: &str) {
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(ns, &DeleteParams::background()).await;
    let started = Instant::now();
    let gone = wait_until(
        Duration::from_secs(600),
        Duration::from_millis(500),
        || async { matches!(api.get_opt(ns).await, Ok(None)).then_some(()) },
    )
    .await;
    match gone {
        Some(()) => say(
            "cleanup",
            format!("namespace {ns} deleted in {}", s(started.elapsed())),
        ),
        None => say(
            "cleanup",
            format!("namespace {ns} still there after 600 s; going on"),
        ),
    }
}

/// Waits (at most `limit`) until two successive one-second scrapes show no write by anyone:
/// the tail of a burst of reconciles is over. Returns how long that took, or `None`.
async fn wait_quiet(client: &kube::Client, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut quiet = 0;
    let mut last = scrape(client).await.ok()?;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = scrape(client).await.ok()?;
        let writes = diff(&now, &last)
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("GET ") && !k.starts_with("LIST ") && !k.starts_with("WATCH ")
            })
            .filter(|(k, _)| !k.ends_with(" leases"))
            .map(|(_, v)| *v)
            .sum::<f64>();
        last = now;
        quiet = if writes == 0.0 { quiet + 1 } else { 0 };
        if quiet >= 2 {
            return Some(started.elapsed());
        }
    }
    None
}

fn brief(r: &Requests) -> String {
    r.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_ready(cr: &EagleEyeCredential) -> bool {
    cr.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

// ---------------------------------------------------------------------------------------------
// kube-apiserver's own request counter

/// `apiserver_request_total`, summed by verb and resource (with subresource).
type Requests = BTreeMap<String, f64>;

/// The goals this benchmark enforces (docs/scale.md). Writes and reads per refresh are
/// ceilings on today's design (four writes: spend intent, write-back, target, status; one
/// quorum read of the token, plus cache misses; measured 4.2-4.6 and 1.8-2.6 at N = 100), with
/// room for run-to-run noise: a regression that adds a request per refresh fails. Issue 20 is
/// to bring them to 4 and 1.
const MAX_WRITES_PER_REFRESH: f64 = 5.5;
const MAX_READS_PER_REFRESH: f64 = 3.5;
/// From this N on, the issue's own goals (issue 20) apply: the design's four writes and one
/// read per steady refresh, and cold start and apply within 1.25× the floor. Below it (CI's
/// N = 100 with 30 s tokens, where a window holds few refreshes) the ceilings above catch a
/// regression.
const ISSUE_GOALS_FROM: usize = 1_000;
const ISSUE_WRITES_PER_REFRESH: f64 = 4.0;
const ISSUE_READS_PER_REFRESH: f64 = 1.0;
const MAX_FLOOR_RATIO: f64 = 1.25;

/// The issue's goal on a phase's time against its floor (from `ISSUE_GOALS_FROM` on).
fn floor_goal(table: &mut Table, what: &str, n: usize, took: Duration, floor: Option<Duration>) {
    let Some(floor) = floor.filter(|_| n >= ISSUE_GOALS_FROM) else {
        return;
    };
    let r = took.as_secs_f64() / floor.as_secs_f64().max(1e-9);
    table.goal(
        format!("{what}, against the floor"),
        format!("{r:.2}×"),
        format!("≤ {MAX_FLOOR_RATIO}×"),
        r <= MAX_FLOOR_RATIO,
    );
}
const MAX_HANDOVER: Duration = Duration::from_secs(3);
/// How long a replica gets to exit after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(60);
/// Set when something worth a look happened in a run that otherwise passes.
static KEEP_LOGS: AtomicBool = AtomicBool::new(false);
/// The production Lease (15 s) and 3 s.
const MAX_FAILOVER: Duration = Duration::from_secs(18);

/// A takeover's row and goal: from the signal until the other replica holds the Lease
/// (`None`: not within 120 s).
fn takeover(table: &mut Table, what: &str, took: Option<Duration>, bound: Duration, note: String) {
    let measured = took.map_or("not within 120 s".into(), s);
    table.row(
        format!("{what}: signal → the other replica holds the Lease"),
        measured.clone(),
        note,
    );
    table.goal(what, measured, s(bound), took.is_some_and(|t| t <= bound));
}

/// No refresh token spent twice at `si` in the whole of a phase.
fn reuse_goal(table: &mut Table, phase: &str, si: &StandIn) {
    let reused = si.counters().reused_refresh_tokens;
    table.goal(
        format!("no refresh token spent twice ({phase})"),
        format!("{reused} reused"),
        "0",
        reused == 0,
    );
}

/// Writes and reads in `window`, less the background scaled to the same length. Watches
/// are neither: one long request each, opened before the window.
fn writes_and_reads(window: &Requests, background: (&Requests, f64)) -> (f64, f64) {
    let (mut writes, mut reads) = (0.0, 0.0);
    for (key, v) in window {
        let v = v - background.0.get(key).copied().unwrap_or(0.0) * background.1;
        match key.split_whitespace().next().unwrap_or("") {
            "GET" | "LIST" => reads += v,
            "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE" | "DELETECOLLECTION" => writes += v,
            _ => {}
        }
    }
    (non_negative(writes), non_negative(reads))
}

async fn scrape(client: &kube::Client) -> Result<Requests> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(request)
        .await
        .context("reading kube-apiserver's /metrics")?;
    let mut out = Requests::new();
    for (l, value) in series(&text, "apiserver_request_total") {
        let label = |k: &str| l.get(k).copied().unwrap_or("");
        let (resource, sub, verb) = (label("resource"), label("subresource"), label("verb"));
        let key = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *out.entry(key).or_default() += value;
    }
    Ok(out)
}

/// Every sample of counter `name` in Prometheus text: its labels and value.
fn series<'a>(
    text: &'a str,
    name: &'a str,
) -> impl Iterator<Item = (HashMap<&'a str, &'a str>, f64)> + 'a {
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (labels, value) = rest.rsplit_once("} ")?;
        let value = value.trim().parse::<f64>().ok()?;
        let labels = labels
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        Some((labels, value))
    })
}

fn diff(after: &Requests, before: &Requests) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

/// A window's requests as `verb resource  count (per unit)`, with the background's rate over
/// the same length beside.
fn request_rows(
    table: &mut Table,
    prefix: &str,
    window: &Requests,
    per: f64,
    unit: &str,
    background: Option<(&Requests, f64)>,
    own: &Requests,
) {
    let mut rows: Vec<(&String, &f64)> = window.iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(a.1));
    // Below 0.01 per unit: the control plane's own watch restarts and discovery, summed.
    let (mut rest, mut rest_kinds) = (0.0, 0);
    for (k, v) in rows {
        let bg = background
            .map(|(b, scale)| b.get(k).copied().unwrap_or(0.0) * scale)
            .unwrap_or(0.0);
        if per > 0.0 && v / per < 0.01 {
            rest += v;
            rest_kinds += 1;
            continue;
        }
        let value = if per > 0.0 {
            format!("{:.2} {unit} ({v} in the window)", v / per)
        } else {
            format!("{v} requests")
        };
        let o = own.get(k).copied().unwrap_or(0.0);
        let mut note = format!("the operator's own: {o}; others: {}", v - o);
        if background.is_some() {
            note += &format!("; background over the same length: {bg:.1}");
        }
        table.row(format!("{prefix} {k}"), value, note);
    }
    if rest_kinds > 0 {
        table.row(
            format!("{prefix} {rest_kinds} other kinds"),
            format!("{:.3} {unit} ({rest} in the window)", rest / per),
            "each below 0.01: watch restarts and discovery, mostly the control plane's own",
        );
    }
    // Every request explained: the operator's own, by its counter; the rest is the control
    // plane's (kube-apiserver, kube-controller-manager) and, outside the windows, this
    // benchmark's.
    let own_total: f64 = own.values().sum();
    let total: f64 = window.values().sum();
    let others: Vec<String> = window
        .iter()
        .filter_map(|(k, v)| {
            let other = v - own.get(k).copied().unwrap_or(0.0);
            (other > 0.0).then(|| format!("{k} {other}"))
        })
        .collect();
    table.row(
        format!("{prefix} the operator's own requests (its counter)"),
        format!("{own_total} of {total}"),
        format!("not the operator's: {}", others.join(", ")),
    );
}

/// The operator processes' own requests summed, less `before` if given.
async fn own_requests(replicas: &[Replica], before: Option<&Requests>) -> Requests {
    let mut sum = Requests::new();
    for r in replicas {
        for (k, v) in own_diff(r.own_requests().await, &Requests::new()) {
            *sum.entry(k).or_default() += v;
        }
    }
    match before {
        Some(before) => diff(&sum, before),
        None => sum,
    }
}

/// The issue's memory goals: peak RSS ≤ 24 MiB at 1,000 credentials and ≤ 64 MiB at
/// 10,000, cold start included; between and beyond, the straight line through both. Below
/// 1,000 (CI's N = 100, about 23 MiB today) a ceiling that catches a regression.
fn rss_bound_kib(n: usize) -> u64 {
    if n < ISSUE_GOALS_FROM {
        return 32 * 1024;
    }
    // 40 MiB more over the 9,000 credentials between (multiplied first: 4.55 KiB each).
    24 * 1024 + n.saturating_sub(1_000) as u64 * (64 - 24) * 1024 / 9_000
}

fn rss_goal(table: &mut Table, what: &str, n: usize, hwm_kib: u64) {
    let bound = rss_bound_kib(n);
    table.goal(
        format!("peak RSS (VmHWM), {what}, {n} credentials"),
        mib(hwm_kib),
        mib(bound),
        hwm_kib > 0 && hwm_kib <= bound,
    );
}

/// `after - before` of the operator's own counter, when both scrapes worked.
fn own_diff(after: Result<Requests>, before: &Requests) -> Requests {
    match after {
        Ok(after) => diff(&after, before),
        Err(e) => {
            say("warn", format!("the operator's own request count: {e:#}"));
            Requests::new()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Default)]
struct Table {
    rows: Vec<(String, String, String)>,
    /// Goals checked in this run (docs/scale.md): what, measured, bound, met.
    goals: Vec<(String, String, String, bool)>,
}

impl Table {
    fn row(
        &mut self,
        figure: impl Into<String>,
        value: impl Into<String>,
        note: impl Into<String>,
    ) {
        let (figure, value, note) = (figure.into(), value.into(), note.into());
        say("figure", format!("{figure}: {value} {note}"));
        self.rows.push((figure, value, note));
    }

    /// A goal the run must meet: reported beside the table, and the benchmark exits 1
    /// when any is missed.
    fn goal(
        &mut self,
        what: impl Into<String>,
        measured: impl Into<String>,
        bound: impl Into<String>,
        met: bool,
    ) {
        let (what, measured, bound) = (what.into(), measured.into(), bound.into());
        let verdict = if met { "met" } else { "MISSED" };
        say(
            "goal",
            format!("{what}: {measured} (goal {bound}): {verdict}"),
        );
        self.goals.push((what, measured, bound, met));
    }

    fn missed(&self) -> impl Iterator<Item = &str> {
        self.goals.iter().filter(|g| !g.3).map(|g| g.0.as_str())
    }

    fn print(&self, n: usize) {
        let w0 = self
            .rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(6);
        let w1 = self
            .rows
            .iter()
            .map(|r| r.1.chars().count())
            .max()
            .unwrap_or(5);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\n### N = {n}\n");
        let _ = writeln!(
            out,
            "| {:<w0$} | {:<w1$} | floor / reference / note |",
            "figure", "value"
        );
        let _ = writeln!(out, "|{}|{}|---|", "-".repeat(w0 + 2), "-".repeat(w1 + 2));
        for (f, v, n) in &self.rows {
            let _ = writeln!(out, "| {f:<w0$} | {v:<w1$} | {n} |");
        }
        if !self.goals.is_empty() {
            let _ = writeln!(out, "\n| goal | measured | bound | |\n|---|---|---|---|");
            for (what, measured, bound, met) in &self.goals {
                let verdict = if *met { "met" } else { "**MISSED**" };
                let _ = writeln!(out, "| {what} | {measured} | {bound} | {verdict} |");
            }
        }
        let _ = out.flush();
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials

struct Login {
    name: String,
    client_id: String,
    client_secret: String,
    refresh_token: String,
}

fn register(si: &StandIn, prefix: &str, n: usize, from: usize) -> Vec<Login> {
    (from..from + n)
        .map(|i| {
            let name = format!("c{i:05}");
            let client_id = format!("{prefix}-{name}");
            let client_secret = format!("s{:016x}", rand::random::<u64>());
            si.register_client(ClientRegistration {
                id: client_id.clone(),
                secret: client_secret.clone(),
                redirect_uris: vec!["http://127.0.0.1:3333".into()],
                rotating: true,
            });
            let grant = si.login(&client_id);
            Login {
                name,
                client_id,
                client_secret,
                refresh_token: grant.refresh_token,
            }
        })
        .collect()
}

fn credential(name: &str, auth_url: &str) -> Result<EagleEyeCredential> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "eagle-eye-operator.io/v1alpha1",
        "kind": "EagleEyeCredential",
        "metadata": {"name": name},
        "spec": {
            "clientSecretRef": {"name": format!("{name}-client")},
            "refreshTokenSecretRef": {"name": format!("{name}-refresh")},
            "authUrl": auth_url,
        }
    }))?)
}

/// The two Secrets of a login; returns the refresh-token Secret as created.
async fn create_secrets(secrets: &Api<Secret>, l: &Login, now: &str) -> Result<Secret> {
    let pp = PostParams::default();
    secrets
        .create(
            &pp,
            &opaque(
                &format!("{}-client", l.name),
                [
                    ("client_id", l.client_id.as_str()),
                    ("client_secret", &l.client_secret),
                ],
                BTreeMap::new(),
            ),
        )
        .await?;
    Ok(secrets
        .create(
            &pp,
            &opaque(
                &format!("{}-refresh", l.name),
                [("refresh_token", l.refresh_token.as_str())],
                BTreeMap::from([(LOGIN_TIME.to_owned(), now.to_owned())]),
            ),
        )
        .await?)
}

/// Creates the logins' Secrets and credentials at `concurrency`; returns when the first
/// create was sent.
async fn create_credentials(
    client: &kube::Client,
    ns: &str,
    logins: &[Login],
    auth_url: &str,
    concurrency: usize,
    shards: usize,
) -> Result<Instant> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let crs: Api<EagleEyeCredential> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now().to_string();
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(logins.iter().enumerate())
        .map(|(i, l)| {
            let (secrets, crs, now, done) = (&secrets, &crs, &now, &done);
            async move {
                create_secrets(secrets, l, now).await?;
                let mut cr = credential(&l.name, auth_url)?;
                if shards > 1 {
                    cr.metadata.labels =
                        Some([(SHARD_LABEL.to_owned(), format!("s{}", i % shards))].into());
                }
                crs.create(&PostParams::default(), &cr).await?;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 1000 == 0 {
                    say("create", format!("{d} credentials created"));
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .context("creating credentials")?;
    Ok(started)
}

/// When each credential of a namespace was first seen Ready, from a watch.
struct ReadyWatch {
    first_ready: Arc<Mutex<HashMap<String, Instant>>>,
    task: JoinHandle<()>,
}

impl ReadyWatch {
    fn start(api: Api<EagleEyeCredential>) -> ReadyWatch {
        let first_ready = Arc::new(Mutex::new(HashMap::new()));
        let map = first_ready.clone();
        let task = tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default());
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(cr) | watcher::Event::InitApply(cr)) => {
                        if is_ready(&cr)
                            && let Some(name) = cr.metadata.name.clone()
                        {
                            lock(&map).entry(name).or_insert_with(Instant::now);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        ReadyWatch { first_ready, task }
    }

    fn count(&self) -> usize {
        lock(&self.first_ready).len()
    }

    fn at(&self, name: &str) -> Option<Instant> {
        lock(&self.first_ready).get(name).copied()
    }

    /// Waits until `n` are Ready; when the last of them became Ready.
    async fn wait_for(&self, n: usize, limit: Duration, who: &str) -> Result<Instant> {
        let mut last_said = Instant::now();
        let got = wait_until(limit, Duration::from_millis(100), || {
            let map = lock(&self.first_ready);
            let found = (map.len() >= n)
                .then(|| map.values().max().copied())
                .flatten();
            if found.is_none() && last_said.elapsed() > Duration::from_secs(15) {
                say(who, format!("{}/{n} Ready", map.len()));
                last_said = Instant::now();
            }
            drop(map);
            async move { found }
        })
        .await;
        got.with_context(|| format!("only {}/{n} Ready within {}", self.count(), s(limit)))
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// The floor: a minimal client doing the same writes

struct FloorCred {
    login: Login,
    cr: EagleEyeCredential,
    refresh: Secret,
}

/// One refresh done the plain way: token call, write-back PUT, target apply, status apply.
async fn floor_refresh(
    http: &reqwest::Client,
    token_url: &url::Url,
    secrets: &Api<Secret>,
    crs: &Api<EagleEyeCredential>,
    c: &mut FloorCred,
) -> Result<()> {
    let answer: serde_json::Value = http
        .post(token_url.clone())
        .basic_auth(&c.login.client_id, Some(&c.login.client_secret))
        .header("accept", "application/json")
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", c.login.refresh_token.as_str()),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let field = |k: &str| {
        answer
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .with_context(|| format!("token answer without {k}"))
    };
    let (access, refresh) = (field("access_token")?, field("refresh_token")?);
    let expires_in = answer
        .get("expires_in")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let base = answer.get("httpsBaseUrl");
    let hostname = base
        .and_then(|b| b.get("hostname"))
        .and_then(|v| v.as_str())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let port = base
        .and_then(|b| b.get("port"))
        .and_then(|v| v.as_u64())
        .unwrap_or(443) as u16;
    let now = jiff::Timestamp::now();
    let expires_at = now + jiff::SignedDuration::from_secs(expires_in as i64);
    let refresh_fp = fingerprint(&refresh);

    // 1. Write-back: the rotated refresh token and the annotations the operator keeps.
    let mut next = c.refresh.clone();
    next.data.get_or_insert_with(BTreeMap::new).insert(
        "refresh_token".into(),
        k8s_openapi::ByteString(refresh.as_bytes().to_vec()),
    );
    let a = next.metadata.annotations.get_or_insert_with(BTreeMap::new);
    a.insert(
        "eagle-eye-operator.io/token-fingerprint".into(),
        refresh_fp.clone(),
    );
    a.insert(
        "eagle-eye-operator.io/token-issued-at".into(),
        now.to_string(),
    );
    a.insert(
        "eagle-eye-operator.io/spent".into(),
        fingerprint(&c.login.refresh_token),
    );
    let name = next.metadata.name.clone().unwrap_or_default();
    c.refresh = secrets
        .replace(&name, &PostParams::default(), &next)
        .await?;
    c.login.refresh_token = refresh;

    // 2. The target Secret, built as the operator builds it.
    let base_url = format!("https://{hostname}:{port}");
    let spent = vec![fingerprint(&c.login.refresh_token)];
    let publication = Publication {
        access_token: &access,
        token_type: "Bearer",
        hostname: &hostname,
        port,
        base_url: &base_url,
        issued_at: now,
        expires_at,
        refresh_fingerprint: &refresh_fp,
        spent_fingerprints: &spent,
    };
    let secret = target::build(&c.cr, &publication, true);
    let target_name = target::target_name(&c.cr);
    secrets
        .patch(
            &target_name,
            &PatchParams::apply(FLOOR_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await?;

    // 3. The status, of about the operator's size.
    let t = |ts: jiff::Timestamp| serde_json::to_value(Time(ts)).unwrap_or_default();
    let status = serde_json::json!({
        "apiVersion": "eagle-eye-operator.io/v1alpha1",
        "kind": "EagleEyeCredential",
        "status": {
            "observedGeneration": c.cr.metadata.generation,
            "rotation": "Rotating",
            "accessTokenExpiresAt": t(expires_at),
            "lastRefreshAt": t(now),
            "nextRefreshAt": t(expires_at),
            "baseUrl": base_url,
            "targetSecretName": target_name,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "Refreshed",
                "message": format!("access token valid until {expires_at}"),
                "lastTransitionTime": t(now),
                "observedGeneration": c.cr.metadata.generation,
            }],
        }
    });
    crs.patch_status(
        &c.login.name,
        &PatchParams::apply(FLOOR_MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await?;
    Ok(())
}

/// The floor of "apply → all Ready" and of a cold start, in a namespace of its own.
async fn floor(
    client: &kube::Client,
    ns: &str,
    n: usize,
    plan: &Plan,
) -> Result<(Duration, Duration)> {
    let si = StandIn::start(StandInConfig {
        access_ttl: Duration::from_secs(3600),
        tls: false,
        ..Default::default()
    })
    .await?;
    let token_url = si.url().join("oauth2/token")?;
    let logins = register(&si, ns, n, 0);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let crs: Api<EagleEyeCredential> = Api::namespaced(client.clone(), ns);
    let http = reqwest::Client::new();
    let auth_url = si.url().to_string();
    let now = jiff::Timestamp::now().to_string();

    // Apply: create the three objects, then refresh, per credential.
    let started = Instant::now();
    let results: Vec<Result<FloorCred>> = futures::stream::iter(logins)
        .map(|login| {
            let (secrets, crs, http, token_url, auth_url, now) =
                (&secrets, &crs, &http, &token_url, &auth_url, &now);
            async move {
                let refresh = create_secrets(secrets, &login, now).await?;
                let cr = crs
                    .create(&PostParams::default(), &credential(&login.name, auth_url)?)
                    .await?;
                let mut c = FloorCred { login, cr, refresh };
                floor_refresh(http, token_url, secrets, crs, &mut c).await?;
                Ok(c)
            }
        })
        .buffer_unordered(plan.concurrency)
        .collect()
        .await;
    let apply = started.elapsed();
    let mut creds = results
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .context("the floor's creates and writes")?;

    // Cold start: the same refresh on objects already there.
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(creds.iter_mut())
        .map(|c| {
            let (secrets, crs, http, token_url) = (&secrets, &crs, &http, &token_url);
            async move { floor_refresh(http, token_url, secrets, crs, c).await }
        })
        .buffer_unordered(plan.concurrency)
        .collect()
        .await;
    let cold = started.elapsed();
    results
        .into_iter()
        .collect::<Result<Vec<()>>>()
        .context("the floor's refreshes")?;
    si.shutdown().await;
    Ok((apply, cold))
}

// ---------------------------------------------------------------------------------------------
// Operator processes

struct Replica {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
    started: Instant,
}

struct Operators {
    bin: PathBuf,
    kubeconfig: PathBuf,
    dir: PathBuf,
    ns: String,
    concurrency: usize,
    log_filter: String,
    started: usize,
    /// `--allowed-auth-hosts`: the stand-in's loopback address with its port.
    auth_hosts: String,
}

impl Operators {
    fn start(&mut self) -> Result<Replica> {
        self.start_shard(None)
    }

    /// A replica refreshing only the credentials `selector` matches (`None`: every one).
    fn start_shard(&mut self, selector: Option<&str>) -> Result<Replica> {
        self.started += 1;
        let log = self
            .dir
            .join(format!("operator-{}-{}.log", self.ns, self.started));
        let file = std::fs::File::create(&log)?;
        let mut command = tokio::process::Command::new(&self.bin);
        // The kernel kills the operator with this process, even on SIGKILL.
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let concurrency = self.concurrency.to_string();
        let instance = format!("replica-{}", self.started);
        let child = command
            .args([
                "run",
                "--log-format",
                "json",
                "--namespaces",
                &self.ns,
                "--lease-namespace",
                &self.ns,
                "--allowed-api-hosts",
                "127.0.0.1,localhost",
                "--allowed-auth-hosts",
                &self.auth_hosts,
                "--allow-insecure-http",
                "--admin-port",
                "0",
                "--admin-address",
                "127.0.0.1",
                "--metrics-insecure",
                "--max-concurrent-refreshes",
                &concurrency,
                "--instance",
                &instance,
            ])
            .args(selector.map(|s| format!("--credential-selector={s}")))
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", &self.log_filter)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("the operator exited at once")?;
        Ok(Replica {
            child,
            pid,
            log,
            started: Instant::now(),
        })
    }
}

impl Replica {
    /// Its identity in the Lease, from its first log lines.
    async fn identity(&self) -> Result<String> {
        let log = self.log.clone();
        wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .lines()
                .filter(|l| l.contains("identity in the Lease"))
                .find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    v.get("identity")?.as_str().map(str::to_owned)
                });
            async move { found }
        })
        .await
        .with_context(|| format!("no identity in {} within 30 s", self.log.display()))
    }

    /// The admin server's address, once the operator logged it.
    fn admin_addr(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("admin server listening"))
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                v.get("addr")?.as_str().map(str::to_owned)
            })
    }

    /// The operator's own count of the requests it sent to kube-apiserver (its
    /// `eagle_eye_kube_api_requests_total`), keyed as `scrape` keys kube-apiserver's.
    async fn own_requests(&self) -> Result<Requests> {
        let addr = self
            .admin_addr()
            .context("the operator logged no admin address")?;
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await
            .context("reading the operator's /metrics")?;
        let mut out = Requests::new();
        for (l, value) in series(&text, "eagle_eye_kube_api_requests_total") {
            let label = |k: &str| l.get(k).copied().unwrap_or("");
            // kube-apiserver's names for the verbs.
            let verb = match label("verb") {
                "create" => "POST".to_owned(),
                "update" => "PUT".to_owned(),
                other => other.to_ascii_uppercase(),
            };
            *out.entry(format!("{verb} {}", label("resource")))
                .or_default() += value;
        }
        Ok(out)
    }

    /// Waits until its `/readyz` answers 200: it reached the API server and set up its Lease
    /// manager, which is when the operator calls a follower a hot standby.
    async fn wait_ready(&self) -> Result<()> {
        let http = reqwest::Client::new();
        wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
            let addr = self.admin_addr();
            let http = http.clone();
            async move {
                let url = format!("http://{}/readyz", addr?);
                let ok = http.get(url).send().await.ok()?.status().is_success();
                ok.then_some(())
            }
        })
        .await
        .with_context(|| format!("{} not ready within 30 s", self.log.display()))
    }

    fn rss(&self) -> Option<(u64, u64)> {
        rss(self.pid)
    }

    fn cpu(&self) -> Option<Duration> {
        cpu(self.pid)
    }

    /// SIGTERM, SIGKILL after 60 s; how long it took to exit.
    async fn terminate(mut self) -> Duration {
        let sent = Instant::now();
        // SAFETY: signalling our own child, not reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_LIMIT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        sent.elapsed()
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

async fn lease_holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

async fn wait_holder(leases: &Api<Lease>, identity: &str, limit: Duration) -> Option<Instant> {
    wait_until(limit, Duration::from_millis(50), || async {
        (lease_holder(leases).await.as_deref() == Some(identity)).then(Instant::now)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Expired tokens in target Secrets

#[derive(Default)]
struct TargetState {
    /// Per target: access token and the expiry it publishes.
    current: HashMap<String, (String, Option<jiff::Timestamp>)>,
    /// Per target: held a live token once (counting starts there).
    seen_live: HashMap<String, bool>,
    /// Per target: seconds holding a token not live at the stand-in / past its expiry.
    dead_secs: HashMap<String, f64>,
    expired_secs: HashMap<String, f64>,
    samples: usize,
}

struct TargetWatch {
    state: Arc<Mutex<TargetState>>,
    sampling: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl TargetWatch {
    fn start(api: Api<Secret>, si: Arc<StandIn>) -> TargetWatch {
        let state = Arc::new(Mutex::new(TargetState::default()));
        let sampling = Arc::new(AtomicBool::new(false));
        let watch = {
            let state = state.clone();
            tokio::spawn(async move {
                let stream = watcher::watcher(api, watcher::Config::default());
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                            let Some(name) = s.metadata.name.as_deref() else {
                                continue;
                            };
                            if !name.ends_with("-token") {
                                continue;
                            }
                            let get = |k: &str| {
                                s.data
                                    .as_ref()?
                                    .get(k)
                                    .and_then(|v| String::from_utf8(v.0.clone()).ok())
                            };
                            if let Some(token) = get("access_token") {
                                let exp = get("expires_at").and_then(|e| e.parse().ok());
                                lock(&state).current.insert(name.to_owned(), (token, exp));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            })
        };
        let sampler = {
            let (state, sampling) = (state.clone(), sampling.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = Instant::now();
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let dt = now.duration_since(last).as_secs_f64();
                    last = now;
                    if !sampling.load(Ordering::Relaxed) {
                        continue;
                    }
                    let wall = jiff::Timestamp::now();
                    let mut st = lock(&state);
                    let checked: Vec<(String, bool, bool)> = st
                        .current
                        .iter()
                        .map(|(n, (t, exp))| {
                            let expired = exp.is_some_and(|e| e <= wall);
                            (n.clone(), si.access_token_is_live(t), expired)
                        })
                        .collect();
                    st.samples += 1;
                    for (name, live, expired) in checked {
                        // Past its expires_at is expired whether or not it was ever seen live.
                        if expired {
                            *st.expired_secs.entry(name.clone()).or_default() += dt;
                        }
                        if live {
                            st.seen_live.insert(name.clone(), true);
                        }
                        if !live && st.seen_live.get(&name).copied().unwrap_or(false) {
                            *st.dead_secs.entry(name).or_default() += dt;
                        }
                    }
                }
            })
        };
        TargetWatch {
            state,
            sampling,
            tasks: vec![watch, sampler],
        }
    }

    fn set_sampling(&self, on: bool) {
        self.sampling.store(on, Ordering::Relaxed);
    }

    /// (total target-seconds not live, targets affected, longest), and the same for expired.
    fn figures(&self) -> ((f64, usize, f64), (f64, usize, f64), usize) {
        let st = lock(&self.state);
        let sum = |m: &HashMap<String, f64>| {
            (
                m.values().sum::<f64>(),
                m.values().filter(|v| **v > 0.0).count(),
                m.values().copied().fold(0.0, f64::max),
            )
        };
        (sum(&st.dead_secs), sum(&st.expired_secs), st.samples)
    }
}

impl Drop for TargetWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One N

struct Env {
    plane: ControlPlane,
    client: kube::Client,
    operator: PathBuf,
    dir: PathBuf,
    plan: Plan,
}

impl Env {
    fn operators(&self, ns: &str, si: &StandIn) -> Operators {
        let port = si.url().port_or_known_default().unwrap_or_default();
        Operators {
            bin: self.operator.clone(),
            kubeconfig: self.plane.kubeconfig_path().to_owned(),
            dir: self.dir.clone(),
            ns: ns.to_owned(),
            concurrency: self.plan.concurrency,
            log_filter: self.plan.operator_log.clone(),
            started: 0,
            auth_hosts: format!("127.0.0.1:{port},localhost:{port}"),
        }
    }
}

async fn run_n(env: &Env, n: usize, table: &mut Table) -> Result<()> {
    let plan = &env.plan;
    let client = &env.client;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    table.row(
        "setup",
        format!("{n} credentials"),
        format!(
            "concurrency {}, live tokens {}, windows: steady {}, idle {}, burst {}, background {}",
            plan.concurrency,
            s(plan.access_ttl),
            s(plan.steady),
            s(plan.idle),
            s(plan.burst),
            s(plan.background)
        ),
    );

    // Background: nobody but the control plane itself.
    let before = scrape(client).await?;
    tokio::time::sleep(plan.background).await;
    let background = diff(&scrape(client).await?, &before);
    let bg_total: f64 = background.values().sum();
    table.row(
        "background requests (no operator)",
        format!("{bg_total} requests in {}", s(plan.background)),
        brief(&background),
    );
    let bg_per_sec = plan.background.as_secs_f64();

    let (mut floor_apply, mut floor_cold) = (None, None);
    if plan.has(Phase::Floor) {
        let ns = format!("scale-{n}-floor-{tag}");
        create_namespace(client, &ns).await?;
        say("floor", format!("{n} credentials in {ns}"));
        let (apply, cold) = floor(client, &ns, n, plan).await?;
        table.row(
            "floor: create 3 objects + token call + 3 writes, all N",
            s(apply),
            format!("minimal client at concurrency {}", plan.concurrency),
        );
        table.row(
            "floor: token call + 3 writes on existing objects, all N",
            s(cold),
            format!("minimal client at concurrency {}", plan.concurrency),
        );
        floor_apply = Some(apply);
        floor_cold = Some(cold);
        delete_namespace(client, &ns).await;
    }

    let cold_group = [Phase::Cold, Phase::Idle, Phase::Singles, Phase::Unrelated]
        .iter()
        .any(|p| plan.has(*p));
    if cold_group {
        cold(env, n, &tag, table, floor_cold, (&background, bg_per_sec)).await?;
    }
    if plan.has(Phase::Apply) {
        live(env, n, &tag, table, floor_apply, (&background, bg_per_sec)).await?;
    }
    Ok(())
}

async fn cold(
    env: &Env,
    n: usize,
    tag: &str,
    table: &mut Table,
    floor_cold: Option<Duration>,
    background: (&Requests, f64),
) -> Result<()> {
    let (plan, client) = (&env.plan, &env.client);
    let ns = format!("scale-{n}-cold-{tag}");
    create_namespace(client, &ns).await?;
    let si = Arc::new(
        StandIn::start(StandInConfig {
            access_ttl: Duration::from_secs(3600),
            tls: false,
            ..Default::default()
        })
        .await?,
    );
    let logins = register(&si, &ns, n, 0);
    let crs: Api<EagleEyeCredential> = Api::namespaced(client.clone(), &ns);
    let ready = ReadyWatch::start(crs.clone());
    let started = create_credentials(
        client,
        &ns,
        &logins,
        si.url().as_ref(),
        plan.concurrency,
        plan.shards,
    )
    .await?;
    say(
        "cold",
        format!(
            "{n} credentials created in {}, no operator running",
            s(started.elapsed())
        ),
    );
    let mut ops = env.operators(&ns, &si);
    let before_start = scrape(client).await?;
    // One replica, or one per shard (each for its share of the credentials).
    let replicas: Vec<Replica> = match plan.shards {
        1 => vec![ops.start()?],
        k => (0..k)
            .map(|i| ops.start_shard(Some(&format!("{SHARD_LABEL}=s{i}"))))
            .collect::<Result<_>>()?,
    };
    let op = &replicas[0];
    let last = ready.wait_for(n, plan.ready_timeout, "cold").await?;
    let took = last.saturating_duration_since(op.started);
    let (rss_now, hwm) = op.rss().unwrap_or_default();
    let cpu_at_ready = op.cpu();
    // The reconciles its own writes set off go on after the last Ready: counted in, and the
    // idle window starts after them.
    let settled = wait_quiet(client, Duration::from_secs(60)).await;
    let after_ready = scrape(client).await?;
    table.row(
        "cold start, N due: operator start → all Ready",
        s(took),
        match floor_cold {
            Some(f) => format!("floor {} ({} the floor)", s(f), ratio(took, f)),
            None => "floor not run".into(),
        },
    );
    floor_goal(table, "cold start", n, took, floor_cold);
    if let Some(cpu) = cpu_at_ready.filter(|_| replicas.len() == 1) {
        table.row(
            "operator CPU time, start → all Ready (user + system)",
            s(cpu),
            format!(
                "{:.0} % of one core over the cold start",
                cpu.as_secs_f64() * 100.0 / took.as_secs_f64().max(0.001)
            ),
        );
    }
    if replicas.len() == 1 {
        table.row(
            "RSS after cold start / peak RSS (VmHWM)",
            format!("{} / {}", mib(rss_now), mib(hwm)),
            "",
        );
        rss_goal(table, "cold start", n, hwm);
    } else {
        for (i, r) in replicas.iter().enumerate() {
            let (rss_now, hwm) = r.rss().unwrap_or_default();
            let share = n / replicas.len() + usize::from(i < n % replicas.len());
            table.row(
                format!("shard s{i} ({share} credentials): RSS after cold start / peak RSS"),
                format!("{} / {}", mib(rss_now), mib(hwm)),
                "",
            );
            rss_goal(table, &format!("cold start, shard s{i}"), share, hwm);
        }
    }
    let cold_requests = diff(&after_ready, &before_start);
    let own_cold = own_requests(&replicas, None).await;
    if replicas.len() > 1 {
        for (i, r) in replicas.iter().enumerate() {
            let own = own_diff(r.own_requests().await, &Requests::new());
            let share = (n / replicas.len()).max(1) as f64;
            let (writes, reads) = writes_and_reads(&own, (&Requests::new(), 0.0));
            table.row(
                format!("shard s{i}: the operator's own requests per credential, cold start"),
                format!("{:.2} writes, {:.2} reads", writes / share, reads / share),
                brief(&own),
            );
        }
    }
    request_rows(
        table,
        "cold start requests (until no writes for 2 s):",
        &cold_requests,
        n as f64,
        "per credential",
        None,
        &own_cold,
    );
    table.row(
        "cold start token calls",
        format!("{}", si.counters().token_requests),
        format!("refreshes {}", si.counters().refreshes),
    );
    table.row(
        "cold start tail: last Ready → no writes for 2 s",
        settled.map_or("not within 60 s".into(), s),
        "cold start requests count until then; the idle window starts after it",
    );

    if plan.has(Phase::Idle) {
        // Nothing is due for an hour: every request in the window is overhead. The window
        // starts once the cold start's own tail of writes is over.
        let calls_before = si.counters().token_requests;
        let before = scrape(client).await?;
        let own_before = own_requests(&replicas, None).await;
        tokio::time::sleep(plan.idle).await;
        let window = diff(&scrape(client).await?, &before);
        let own = own_requests(&replicas, Some(&own_before)).await;
        let total: f64 = window.values().sum();
        let scale = plan.idle.as_secs_f64() / background.1;
        table.row(
            "idle window (nothing due): API requests",
            format!("{total} requests in {}", s(plan.idle)),
            format!(
                "token calls {}; background over the same length {:.1}",
                si.counters().token_requests - calls_before,
                background.0.values().sum::<f64>() * scale
            ),
        );
        request_rows(
            table,
            "idle:",
            &window,
            0.0,
            "",
            Some((background.0, scale)),
            &own,
        );
        // A watch that kube-runtime re-opens when its server-side timeout ends (every
        // `WATCH_TIMEOUT`, whatever N) is a keep-alive like the Lease, not work: it is
        // allowed that often per watch and process, and counted; anything else is overhead.
        let reopens_allowed =
            (plan.idle.as_secs_f64() / WATCH_TIMEOUT.as_secs_f64()).ceil() * replicas.len() as f64;
        let (mut reopens, mut other) = (Vec::new(), 0.0);
        for (k, v) in &own {
            match k.strip_prefix("WATCH ") {
                Some(_) if *v <= reopens_allowed => reopens.push(format!("{k} {v}")),
                _ if k.ends_with(" leases") && !k.starts_with("WATCH ") => {}
                _ => other += v,
            }
        }
        let other = non_negative(other);
        table.goal(
            "the operator's own requests while nothing is due, other than its Lease and \
             watch re-opens",
            format!("{other}"),
            "0",
            other == 0.0,
        );
        table.row(
            "idle: watch re-opens (kube-runtime's watch timeout)",
            if reopens.is_empty() {
                "none".to_owned()
            } else {
                reopens.join(", ")
            },
            format!(
                "at most {reopens_allowed} per watch: one per {} per process",
                s(WATCH_TIMEOUT)
            ),
        );
        let (rss_now, hwm) = op.rss().unwrap_or_default();
        table.row(
            "RSS at N, idle / peak RSS",
            format!("{} / {}", mib(rss_now), mib(hwm)),
            "",
        );
    }

    if plan.has(Phase::Singles) && plan.singles > 0 {
        let singles = register(&si, &ns, plan.singles, n);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let now = jiff::Timestamp::now().to_string();
        let mut took = Vec::new();
        for l in &singles {
            create_secrets(&secrets, l, &now).await?;
            let sent = Instant::now();
            crs.create(
                &PostParams::default(),
                &credential(&l.name, si.url().as_ref())?,
            )
            .await?;
            let at = wait_until(
                Duration::from_secs(60),
                Duration::from_millis(2),
                || async { ready.at(&l.name) },
            )
            .await
            .with_context(|| format!("single credential {} not Ready within 60 s", l.name))?;
            took.push(at.saturating_duration_since(sent));
        }
        took.sort();
        let pct = |p: f64| took[((took.len() as f64 - 1.0) * p).round() as usize];
        table.row(
            "apply → Ready, single credentials (CR create → Ready seen by a watch)",
            format!(
                "p50 {} ms, p99 {} ms, max {} ms",
                pct(0.5).as_millis(),
                pct(0.99).as_millis(),
                took.last().copied().unwrap_or_default().as_millis()
            ),
            format!(
                "{} samples, one at a time, operator otherwise idle",
                took.len()
            ),
        );
    }

    if plan.has(Phase::Unrelated) && plan.unrelated > 0 {
        let (rss_before, _) = op.rss().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let started = Instant::now();
        let filler = "x".repeat(256);
        let results: Vec<Result<()>> = futures::stream::iter(0..plan.unrelated)
            .map(|i| {
                let (secrets, filler) = (&secrets, &filler);
                async move {
                    let s = opaque(
                        &format!("unrelated-{i:05}"),
                        [("data", filler.as_str())],
                        BTreeMap::new(),
                    );
                    secrets.create(&PostParams::default(), &s).await?;
                    Ok(())
                }
            })
            .buffer_unordered(plan.concurrency * 2)
            .collect()
            .await;
        results
            .into_iter()
            .collect::<Result<Vec<()>>>()
            .context("creating unrelated Secrets")?;
        say(
            "cold",
            format!(
                "{} unrelated Secrets created in {}",
                plan.unrelated,
                s(started.elapsed())
            ),
        );
        // The operator's metadata watch has them within moments; watch RSS settle over 10 s.
        let mut peak_rss = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak_rss = peak_rss.max(op.rss().unwrap_or_default().0);
        }
        let (rss_after, hwm) = op.rss().unwrap_or_default();
        table.row(
            format!(
                "RSS with {} unrelated Secrets added / peak RSS",
                plan.unrelated
            ),
            format!("{} / {}", mib(rss_after), mib(hwm)),
            format!(
                "before adding: {}; highest sample in the 10 s after: {} ({:+.1} %)",
                mib(rss_before),
                mib(peak_rss),
                (rss_after as f64 / rss_before.max(1) as f64 - 1.0) * 100.0
            ),
        );
    }
    for r in replicas {
        let stop = r.terminate().await;
        say("cold", format!("operator stopped (SIGTERM) in {}", s(stop)));
    }
    reuse_goal(table, "cold start", &si);
    drop(ready);
    delete_namespace(client, &ns).await;
    Ok(())
}

async fn live(
    env: &Env,
    n: usize,
    tag: &str,
    table: &mut Table,
    floor_apply: Option<Duration>,
    background: (&Requests, f64),
) -> Result<()> {
    let (plan, client) = (&env.plan, &env.client);
    let ns = format!("scale-{n}-live-{tag}");
    create_namespace(client, &ns).await?;
    let si = Arc::new(
        StandIn::start(StandInConfig {
            access_ttl: plan.access_ttl,
            tls: false,
            ..Default::default()
        })
        .await?,
    );
    let logins = register(&si, &ns, n, 0);
    let crs: Api<EagleEyeCredential> = Api::namespaced(client.clone(), &ns);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let ready = ReadyWatch::start(crs.clone());
    let targets = TargetWatch::start(Api::namespaced(client.clone(), &ns), si.clone());
    let mut ops = env.operators(&ns, &si);
    let op = ops.start()?;
    let id = op.identity().await?;
    wait_holder(&leases, &id, Duration::from_secs(60))
        .await
        .context("the operator did not take the Lease within 60 s")?;
    let (rss_empty, _) = op.rss().unwrap_or_default();
    let empty = (rss_empty, rss_split(op.pid).unwrap_or_default().0);
    table.row(
        "RSS leading, no credentials yet",
        mib(rss_empty),
        "reference for the RSS rows",
    );
    let first =
        create_credentials(client, &ns, &logins, si.url().as_ref(), plan.concurrency, 1).await?;
    let created = first.elapsed();
    let last = ready.wait_for(n, plan.ready_timeout, "live").await?;
    let took = last.saturating_duration_since(first);
    table.row(
        "apply → all Ready (first create → N-th Ready, operator running)",
        s(took),
        match floor_apply {
            Some(f) => format!(
                "floor {} ({} the floor); the creates alone took {}",
                s(f),
                ratio(took, f),
                s(created)
            ),
            None => format!("floor not run; the creates alone took {}", s(created)),
        },
    );
    floor_goal(table, "apply → all Ready", n, took, floor_apply);
    let (rss_now, hwm) = op.rss().unwrap_or_default();
    table.row(
        "RSS after all Ready (live) / peak RSS",
        format!("{} / {}", mib(rss_now), mib(hwm)),
        "",
    );
    memory_rows(table, "after all Ready", op.pid, n, empty);

    let mut op = op;
    if plan.has(Phase::Steady) {
        // Steady state: every credential has refreshed once more on its own schedule.
        let want = 2 * n as u64;
        let limit = plan.access_ttl * 3 + plan.ready_timeout;
        wait_until(limit, Duration::from_millis(200), || async {
            (si.counters().refreshes >= want).then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "only {} refreshes (want {want}) within {}",
                si.counters().refreshes,
                s(limit)
            )
        })?;
        let refreshes_before = si.counters().refreshes;
        let before = scrape(client).await?;
        let own_before = op.own_requests().await.unwrap_or_default();
        targets.set_sampling(true);
        tokio::time::sleep(plan.steady).await;
        targets.set_sampling(false);
        let window = diff(&scrape(client).await?, &before);
        let own = own_diff(op.own_requests().await, &own_before);
        let refreshes = si.counters().refreshes - refreshes_before;
        let c = si.counters();
        table.row(
            "steady window: refreshes (stand-in)",
            format!("{refreshes} in {}", s(plan.steady)),
            format!(
                "{:.2} per credential per minute; reuse so far {}, rejected {}",
                refreshes as f64 / n as f64 / plan.steady.as_secs_f64() * 60.0,
                c.reused_refresh_tokens,
                c.rejected
            ),
        );
        let scale = plan.steady.as_secs_f64() / background.1;
        let total: f64 = window.values().sum();
        let bg_total: f64 = background.0.values().sum::<f64>() * scale;
        table.row(
            "steady: API requests per refresh, all",
            format!(
                "{:.2} per refresh ({total} requests)",
                total / refreshes.max(1) as f64
            ),
            format!(
                "minus background: {:.2} per refresh",
                (total - bg_total) / refreshes.max(1) as f64
            ),
        );
        request_rows(
            table,
            "steady per refresh:",
            &window,
            refreshes.max(1) as f64,
            "per refresh",
            Some((background.0, scale)),
            &own,
        );
        let ((dead, dead_n, dead_max), (exp, exp_n, exp_max), samples) = targets.figures();
        table.row(
            "target-seconds holding an expired access token (past its expires_at)",
            format!("{:.2} s over {n} targets", non_negative(exp)),
            format!(
                "{exp_n} targets affected, longest {exp_max:.2} s; window {}, {samples} samples every {} ms",
                s(plan.steady),
                SAMPLE_EVERY.as_millis()
            ),
        );
        table.row(
            "target-seconds holding a token not live at the stand-in (expired or rotated out)",
            format!("{dead:.2} s over {n} targets"),
            format!(
                "{dead_n} targets affected, longest {dead_max:.2} s (the stand-in kills the old access token at each rotation; a watch adds its delay)"
            ),
        );
        // Sampled at all, and every target seen: a window with no samples shows nothing.
        table.goal(
            "target-seconds holding an expired access token, steady window",
            format!("{:.2} s ({samples} samples)", non_negative(exp)),
            "0 s, sampled",
            exp <= 0.0 && samples > 0,
        );
        let per = refreshes.max(1) as f64;
        let (writes, reads) = writes_and_reads(&window, (background.0, scale));
        table.row(
            "steady: kube-apiserver's count per refresh, minus background: writes / reads",
            format!("{:.2} / {:.2}", writes / per, reads / per),
            "everyone's requests (no client label), less the background's rate",
        );
        // The goals count the operator's own requests (its counter): exact, whatever else
        // the control plane does meanwhile. The Lease's renewals (every 3 s whatever is
        // due) are counted apart.
        let own: Requests = own
            .into_iter()
            .filter(|(k, _)| !k.ends_with(" leases"))
            .collect();
        let (writes, reads) = writes_and_reads(&own, (&Requests::new(), 0.0));
        let (max_writes, max_reads) = match n >= ISSUE_GOALS_FROM {
            true => (ISSUE_WRITES_PER_REFRESH, ISSUE_READS_PER_REFRESH),
            false => (MAX_WRITES_PER_REFRESH, MAX_READS_PER_REFRESH),
        };
        // A refresh whose token call falls before the window and whose writes fall in it
        // (or the other way round) is counted by its requests and not as a refresh: at most
        // one per reconcile running at the edge (the operator's seats: twice
        // --max-concurrent-refreshes, at least 16), each with all its requests. Below the
        // issue's N the ceilings have their own slack for CI's short window.
        let edges = match n >= ISSUE_GOALS_FROM {
            true => (plan.concurrency * 2).max(16) as f64,
            false => 0.0,
        };
        let per_edges = |max: f64| {
            let shown = match edges > 0.0 {
                true => format!(
                    "≤ {max} (+{:.3}: refreshes cut by the window's edges)",
                    max * edges / per
                ),
                false => format!("≤ {max}"),
            };
            (max * (per + edges) / per, shown)
        };
        let (bound, shown) = per_edges(max_writes);
        table.goal(
            "the operator's API writes per steady refresh, its Lease apart",
            format!("{:.4}", writes / per),
            shown,
            refreshes > 0 && writes / per <= bound,
        );
        let (bound, shown) = per_edges(max_reads);
        table.goal(
            "the operator's API reads per steady refresh, its Lease apart",
            format!("{:.4}", reads / per),
            shown,
            refreshes > 0 && reads / per <= bound,
        );
        let (rss_now, hwm) = op.rss().unwrap_or_default();
        table.row(
            "RSS at N, steady refreshing / peak RSS",
            format!("{} / {}", mib(rss_now), mib(hwm)),
            "",
        );
        memory_rows(table, "steady", op.pid, n, empty);
        rss_goal(table, "apply and steady", n, hwm);

        if plan.has(Phase::Burst) {
            let steady_rate = refreshes as f64 / plan.steady.as_secs_f64();
            let stop = op.terminate().await;
            op = ops.start()?;
            let from = op.started;
            tokio::time::sleep(plan.burst).await;
            let log = si.token_requests();
            let within = |d: Duration| {
                log.iter()
                    .filter(|r| r.arrived >= from && r.arrived < from + d)
                    .count()
            };
            let calls = within(plan.burst);
            let early = Duration::from_secs(5).min(plan.burst);
            table.row(
                format!("restart burst: token calls in the first {} after a restart", s(plan.burst)),
                format!("{calls} calls ({} in the first {})", within(early), s(early)),
                format!(
                    "steady rate over the same lengths: {:.1} and {:.1}; the old process took {} to stop (SIGTERM)",
                    steady_rate * plan.burst.as_secs_f64(),
                    steady_rate * early.as_secs_f64(),
                    s(stop)
                ),
            );
        }
    }

    if plan.has(Phase::Handover) {
        let id_a = op.identity().await?;
        wait_holder(&leases, &id_a, Duration::from_secs(60))
            .await
            .context("the first replica did not hold the Lease")?;
        let b = ops.start()?;
        let id_b = b.identity().await?;
        b.wait_ready().await?;
        // The follower is a hot standby once its /readyz answers. Signalled any earlier, it
        // would find the Lease free at its first look, which is no handover.
        let sent = Instant::now();
        let stop = op.terminate().await;
        let at = wait_holder(&leases, &id_b, Duration::from_secs(120)).await;
        takeover(
            table,
            "SIGTERM handover",
            at.map(|at| at.saturating_duration_since(sent)),
            MAX_HANDOVER,
            format!("the leader took {} to exit", s(stop)),
        );
        let a = ops.start()?;
        let id_a = a.identity().await?;
        a.wait_ready().await?;
        // Wait until the restarted replica is following: it has read the Lease (logged) and
        // the holder is b.
        wait_holder(&leases, &id_b, Duration::from_secs(30))
            .await
            .context("b lost the Lease")?;
        let sent = Instant::now();
        b.kill().await;
        let at = wait_holder(&leases, &id_a, Duration::from_secs(120)).await;
        takeover(
            table,
            "SIGKILL failover",
            at.map(|at| at.saturating_duration_since(sent)),
            MAX_FAILOVER,
            "Lease duration 15 s".into(),
        );
        op = a;
    }
    let stop = op.terminate().await;
    let stuck = stop >= STOP_LIMIT;
    table.row(
        "SIGTERM of the last leader: signal → exit",
        s(stop),
        if stuck {
            "did not exit by itself: SIGKILLed, operator logs kept"
        } else {
            ""
        },
    );
    if stuck {
        KEEP_LOGS.store(true, Ordering::Relaxed);
    }
    // Over the whole run: the steady window, the restart burst, the handover and failover.
    reuse_goal(table, "live", &si);
    drop(targets);
    drop(ready);
    delete_namespace(client, &ns).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scale: cannot start tokio: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("scale: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let _ = t0();
    let command: Vec<String> = std::env::args().collect();
    println!("command: {}", command.join(" "));
    let plan = Plan::from_args(&args)?;
    let operator = operator_binary(args.operator.as_deref())?;
    let dir = std::env::temp_dir().join(format!("eagle-eye-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    say(
        "scale",
        format!("operator {}, logs in {}", operator.display(), dir.display()),
    );
    let plane = ControlPlane::start()
        .await
        .context("starting the control plane")?;
    let client = plane.client().await?;
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    plane.install_crds(&client, &crds).await?;
    say("scale", "control plane up, CRDs installed");
    let env = Env {
        plane,
        client,
        operator,
        dir: dir.clone(),
        plan,
    };
    let mut ok = true;
    let mut tables = Vec::new();
    for &n in &args.n {
        let mut table = Table::default();
        if let Err(e) = run_n(&env, n, &mut table).await {
            table.row(
                "error",
                format!("{e:#}"),
                "the remaining figures of this N were not measured",
            );
            ok = false;
        }
        table.print(n);
        tables.push((n, table));
    }
    println!("\ncommand: {}", command.join(" "));
    for (n, table) in &tables {
        table.print(*n);
    }
    let missed: Vec<String> = tables
        .iter()
        .flat_map(|(n, t)| t.missed().map(move |what| format!("N = {n}: {what}")))
        .collect();
    if missed.is_empty() {
        println!("\nevery goal met");
    } else {
        println!("\ngoals MISSED: {}", missed.join("; "));
        ok = false;
    }
    if ok && !args.keep_logs && !KEEP_LOGS.load(Ordering::Relaxed) {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("operator logs kept in {}", dir.display());
    }
    Ok(ok)
}
