//! Live reload of certificates, keys, CA bundles, CRLs, the policy and the
//! limits file.
//!
//! Files are grouped by what they build: the TLS group (certificate, key,
//! client CA bundle, CRLs) builds a rustls config; the policy group builds a
//! [`Policy`]; the limits group (if there is a limits file) builds a
//! [`LimitsConfig`]. A reload reads every file of a group, and if any content
//! changed, builds the new value from exactly those bytes and swaps it in.
//! New handshakes and new RPCs use it at once; open connections keep
//! theirs until their max age ends them.
//!
//! A group whose files do not build (half-written, unreadable, a key that
//! does not match its certificate, a bad CRL, an invalid policy) is refused:
//! the error is logged once, naming the file, and the last good value stays
//! in force. The refused contents are remembered, so the same bad file is
//! not reported again on every poll; the next change is tried afresh.
//!
//! What triggers a reload: file system events on the files' directories
//! (debounced), a poll as a fallback for file systems without events (and
//! for Kubernetes-style symlink swaps), and SIGHUP.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::authz::SharedPolicy;
use crate::policy::{check, PathCheck, Policy};
use crate::quota::{Limiter, LimitsConfig};
use crate::tls::{
    self, CertifiedKeyFiles, ClientTlsOptions, RevocationLists, ServerTlsOptions, TrustAnchors,
};

/// What one reload of one group did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupOutcome {
    /// Nothing new since the last attempt.
    Unchanged,
    /// The new contents were applied; these files had changed.
    Applied(Vec<PathBuf>),
    /// The new contents were refused; the last good value stays.
    Refused(String),
}

/// Files whose contents are applied together, all or nothing.
struct FileGroup {
    paths: Vec<PathBuf>,
    /// The contents in force (`None` before the first successful load).
    applied: Option<Vec<Vec<u8>>>,
    /// The contents (or read error) last refused, so it is reported once.
    refused: Option<Result<Vec<Vec<u8>>, String>>,
}

impl FileGroup {
    fn new(paths: Vec<PathBuf>) -> Self {
        Self {
            applied: None,
            paths,
            refused: None,
        }
    }

    fn in_force(&self, path: &Path) -> Option<Vec<u8>> {
        let i = self.paths.iter().position(|p| p == path)?;
        self.applied.as_ref().map(|a| a[i].clone())
    }

    /// Reads every file; on failure, names every file that could not be
    /// read (one per line).
    fn read_all(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut contents = Vec::with_capacity(self.paths.len());
        let mut errors = Vec::new();
        for p in &self.paths {
            match std::fs::read(p) {
                Ok(c) => contents.push(c),
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            }
        }
        if errors.is_empty() {
            Ok(contents)
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Reads the files; if they differ from what is in force, calls `build`
    /// with the new contents and records the outcome.
    fn reload(&mut self, build: impl FnOnce(&[Vec<u8>]) -> Result<(), String>) -> GroupOutcome {
        let current = self.read_all();
        if current.is_ok() && current.as_ref().ok() == self.applied.as_ref() {
            self.refused = None;
            return GroupOutcome::Unchanged;
        }
        if self.refused.as_ref() == Some(&current) {
            return GroupOutcome::Unchanged;
        }
        let contents = match current {
            Ok(contents) => contents,
            Err(e) => {
                self.refused = Some(Err(e.clone()));
                return GroupOutcome::Refused(e);
            }
        };
        if let Err(e) = build(&contents) {
            self.refused = Some(Ok(contents));
            return GroupOutcome::Refused(e);
        }
        let changed = self
            .paths
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                self.applied
                    .as_ref()
                    .is_none_or(|old| old[*i] != contents[*i])
            })
            .map(|(_, p)| p.clone())
            .collect();
        self.applied = Some(contents);
        self.refused = None;
        GroupOutcome::Applied(changed)
    }
}

/// The files the server's TLS config and policy come from.
#[derive(Clone, Debug)]
pub struct ServerSources {
    /// The server's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// The CA bundle (PEM) client certificates must chain to.
    pub client_ca: PathBuf,
    /// CRL files (PEM); each must exist, like the other TLS files.
    pub crls: Vec<PathBuf>,
    /// The authorization policy (A43 JSON).
    pub policy: PathBuf,
    /// The limits file, if any (without one: fair share only).
    pub limits: Option<PathBuf>,
    /// How the policy's paths are checked against the served methods, at
    /// load and on every reload.
    pub policy_check: PathCheck,
    /// The TLS settings that are not files (TLS version, strict SPIFFE),
    /// the same on every reload.
    pub tls: ServerTlsOptions,
}

impl ServerSources {
    fn tls_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone(), self.client_ca.clone()];
        paths.extend(self.crls.iter().cloned());
        paths
    }

    /// Every file, for watching.
    pub fn all_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.tls_paths();
        paths.push(self.policy.clone());
        paths.extend(self.limits.clone());
        paths
    }

    /// Builds the limits from the file's contents; errors list every
    /// problem, one per line, each naming the file.
    fn build_limits(&self, contents: &[Vec<u8>]) -> Result<LimitsConfig, String> {
        let path = self.limits.as_deref().unwrap_or(Path::new("(none)"));
        let text = std::str::from_utf8(&contents[0])
            .map_err(|e| format!("limits file {}: not UTF-8: {e}", path.display()))?;
        crate::quota::parse(text, self.policy_check.served.as_deref()).map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("limits file {}: {e}", path.display()))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// Builds the TLS config from file contents. Every file is parsed even
    /// after one fails, so that all problems are reported at once (one per
    /// line).
    fn build_tls(&self, contents: &[Vec<u8>]) -> Result<Arc<rustls::ServerConfig>, String> {
        fn keep<T>(errors: &mut Vec<String>, r: Result<T, tls::TlsError>) -> Option<T> {
            r.map_err(|e| errors.push(e.to_string())).ok()
        }
        let mut errors = Vec::new();
        let chain = keep(
            &mut errors,
            tls::parse_certs(&contents[0], &self.cert, "certificate"),
        );
        let key = keep(&mut errors, tls::parse_key(&contents[1], &self.key));
        let ca = keep(
            &mut errors,
            TrustAnchors::from_pem(&self.client_ca, &contents[2]),
        );
        let crls: Vec<_> = self
            .crls
            .iter()
            .zip(&contents[3..])
            .filter_map(|(path, pem)| keep(&mut errors, RevocationLists::from_pem(path, pem)))
            .collect();
        match (chain, key, ca) {
            (Some(chain), Some(key), Some(ca)) if errors.is_empty() => {
                let identity = CertifiedKeyFiles {
                    chain,
                    key,
                    cert_path: self.cert.clone(),
                    key_path: self.key.clone(),
                };
                tls::server_config(&identity, &ca, &crls, self.tls.clone())
                    .map_err(|e| e.to_string())
            }
            _ => Err(errors.join("\n")),
        }
    }

    /// Builds the policy, logging its warnings. Errors list every problem
    /// in the file, one per line, so that an operator fixes them in one go.
    fn build_policy(&self, contents: &[Vec<u8>]) -> Result<Policy, String> {
        let text = std::str::from_utf8(&contents[0])
            .map_err(|e| format!("policy file {}: not UTF-8: {e}", self.policy.display()))?;
        let loaded =
            check::load(&self.policy, text, &self.policy_check).map_err(|e| e.join("\n"))?;
        for w in &loaded.warnings {
            warn!(warning = %w, "policy warning");
        }
        Ok(loaded.policy)
    }
}

/// Reloads the server's TLS config and policy from their files.
pub struct ServerReloader {
    sources: ServerSources,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    policy: SharedPolicy,
    limiter: Arc<Limiter>,
    groups: Mutex<Groups>,
    attempts: watch::Sender<u64>,
}

struct Groups {
    tls: FileGroup,
    policy: FileGroup,
    limits: Option<FileGroup>,
}

/// What one [`ServerReloader::reload_all`] did, by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcomes {
    /// The TLS group: certificate, key, client CA bundle and CRLs.
    pub tls: GroupOutcome,
    /// The policy file.
    pub policy: GroupOutcome,
    /// `Unchanged` when there is no limits file.
    pub limits: GroupOutcome,
}

/// Everything the first load produced.
pub struct Loaded {
    /// Reloads the same files into the handles below.
    pub reloader: Arc<ServerReloader>,
    /// The TLS config in force; each reload swaps what it holds.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    /// The policy in force; each reload swaps what it holds.
    pub policy: SharedPolicy,
    /// The limits in force (the limits file's, or fair share only).
    pub limiter: Arc<Limiter>,
}

impl ServerReloader {
    /// Loads everything once. Fails, with every problem listed, if anything
    /// does not build: at startup there is no last good value to keep.
    pub fn load(sources: ServerSources) -> Result<Loaded, Vec<String>> {
        let mut tls_group = FileGroup::new(sources.tls_paths());
        let mut policy_group = FileGroup::new(vec![sources.policy.clone()]);
        let mut errors = Vec::new();
        let mut tls = None;
        let mut policy = None;
        let tls_outcome = tls_group.reload(|c| sources.build_tls(c).map(|t| tls = Some(t)));
        if let GroupOutcome::Refused(e) = tls_outcome {
            errors.extend(e.lines().map(str::to_owned));
        }
        let policy_outcome =
            policy_group.reload(|c| sources.build_policy(c).map(|p| policy = Some(p)));
        if let GroupOutcome::Refused(e) = policy_outcome {
            errors.extend(e.lines().map(str::to_owned));
        }
        let mut limits = None;
        let mut limits_group = sources.limits.clone().map(|p| FileGroup::new(vec![p]));
        if let Some(group) = &mut limits_group {
            let outcome = group.reload(|c| sources.build_limits(c).map(|l| limits = Some(l)));
            if let GroupOutcome::Refused(e) = outcome {
                errors.extend(e.lines().map(str::to_owned));
            }
        }
        let (Some(tls), Some(policy), true) = (tls, policy, errors.is_empty()) else {
            return Err(errors);
        };
        let tls = Arc::new(ArcSwap::new(tls));
        let policy: SharedPolicy = Arc::new(ArcSwap::from_pointee(policy));
        let limiter = Arc::new(Limiter::new(
            limits.unwrap_or_else(LimitsConfig::fair_share_only),
        ));
        let reloader = Arc::new(ServerReloader {
            sources,
            tls: tls.clone(),
            policy: policy.clone(),
            limiter: limiter.clone(),
            groups: Mutex::new(Groups {
                tls: tls_group,
                policy: policy_group,
                limits: limits_group,
            }),
            attempts: watch::Sender::new(0),
        });
        Ok(Loaded {
            reloader,
            tls,
            policy,
            limiter,
        })
    }

    /// The files this reloader reads, as it was loaded with.
    pub fn sources(&self) -> &ServerSources {
        &self.sources
    }

    /// The contents of `path` that the configuration in force was built
    /// from, if `path` is one of the watched files.
    pub fn in_force(&self, path: &Path) -> Option<Vec<u8>> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups
            .tls
            .in_force(path)
            .or_else(|| groups.policy.in_force(path))
            .or_else(|| groups.limits.as_ref()?.in_force(path))
    }

    /// Counts reloads that did something (applied or refused). Tests and
    /// tools wait on it instead of sleeping.
    pub fn watch_attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Re-reads every file and applies what changed; the TLS and policy
    /// outcomes. See [`reload_all`](Self::reload_all).
    pub fn reload(&self) -> (GroupOutcome, GroupOutcome) {
        let o = self.reload_all();
        (o.tls, o.policy)
    }

    /// Re-reads every file and applies what changed. Logs one line per
    /// reload that did something.
    pub fn reload_all(&self) -> Outcomes {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let tls_outcome = groups.tls.reload(|c| {
            let config = self.sources.build_tls(c)?;
            self.tls.store(config);
            Ok(())
        });
        let policy_outcome = groups.policy.reload(|c| {
            let policy = self.sources.build_policy(c)?;
            self.policy.store(Arc::new(policy));
            Ok(())
        });
        let limits_outcome = match &mut groups.limits {
            Some(group) => group.reload(|c| {
                let limits = self.sources.build_limits(c)?;
                self.limiter.apply(limits);
                Ok(())
            }),
            None => GroupOutcome::Unchanged,
        };
        drop(groups);
        let outcomes = Outcomes {
            tls: tls_outcome,
            policy: policy_outcome,
            limits: limits_outcome,
        };
        let mut changed = BTreeSet::new();
        for outcome in [&outcomes.tls, &outcomes.policy, &outcomes.limits] {
            match outcome {
                GroupOutcome::Applied(files) => {
                    changed.extend(files.iter().map(|f| f.display().to_string()))
                }
                GroupOutcome::Refused(e) => {
                    let e = e.replace('\n', "; ");
                    error!(error = %e, "reload refused; the last good configuration stays in force")
                }
                GroupOutcome::Unchanged => {}
            }
        }
        if !changed.is_empty() {
            let changed: Vec<_> = changed.into_iter().collect();
            let policy = self.policy.load();
            info!(changed = %changed.join(", "), policy = policy.name(), "configuration reloaded");
        }
        let unchanged = GroupOutcome::Unchanged;
        if [&outcomes.tls, &outcomes.policy, &outcomes.limits]
            .iter()
            .any(|o| **o != unchanged)
        {
            self.attempts.send_modify(|n| *n += 1);
        }
        outcomes
    }

    /// The limits in force.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }
}

/// Reloads a client's own certificate, key and server CA bundle, so that a
/// long-running client presents its rotated certificate on new connections.
pub struct ClientReloader {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    opts: ClientTlsOptions,
    config: Arc<ArcSwap<rustls::ClientConfig>>,
    group: Mutex<FileGroup>,
    attempts: watch::Sender<u64>,
}

impl ClientReloader {
    /// Loads the client config once; fails if it does not build.
    pub fn load(
        cert: &Path,
        key: &Path,
        ca: &Path,
        opts: ClientTlsOptions,
    ) -> Result<Arc<Self>, String> {
        let mut group = FileGroup::new(vec![cert.to_owned(), key.to_owned(), ca.to_owned()]);
        let mut first = None;
        let outcome =
            group.reload(|c| build_client(cert, key, ca, opts, c).map(|cfg| first = Some(cfg)));
        let config = match (outcome, first) {
            (_, Some(config)) => config,
            (GroupOutcome::Refused(e), None) => return Err(e),
            (_, None) => return Err("client TLS files did not load".to_owned()),
        };
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
            opts,
            config: Arc::new(ArcSwap::new(config)),
            group: Mutex::new(group),
            attempts: watch::Sender::new(0),
        }))
    }

    /// The config new connections use; pass it to [`crate::client::connect`].
    pub fn config(&self) -> Arc<ArcSwap<rustls::ClientConfig>> {
        self.config.clone()
    }

    /// The certificate, key and CA files, for watching.
    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.cert.clone(), self.key.clone(), self.ca.clone()]
    }

    /// Counts reloads that did something, as
    /// [`ServerReloader::watch_attempts`] does.
    pub fn watch_attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Re-reads the three files and, if they changed and build, swaps the
    /// new config in; a refusal keeps the last good one. Logs one line
    /// when it did something.
    pub fn reload(&self) -> GroupOutcome {
        let mut group = self.group.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = group.reload(|c| {
            let config = build_client(&self.cert, &self.key, &self.ca, self.opts, c)?;
            self.config.store(config);
            Ok(())
        });
        drop(group);
        match &outcome {
            GroupOutcome::Applied(files) => {
                let files: Vec<_> = files.iter().map(|f| f.display().to_string()).collect();
                info!(changed = %files.join(", "), "client TLS configuration reloaded");
            }
            GroupOutcome::Refused(e) => {
                error!(error = %e, "client TLS reload refused; keeping the last good configuration")
            }
            GroupOutcome::Unchanged => {}
        }
        if outcome != GroupOutcome::Unchanged {
            self.attempts.send_modify(|n| *n += 1);
        }
        outcome
    }
}

/// Builds a client config from the contents of its certificate, key and CA
/// files.
fn build_client(
    cert: &Path,
    key: &Path,
    ca: &Path,
    opts: ClientTlsOptions,
    contents: &[Vec<u8>],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let identity = CertifiedKeyFiles::from_pem(cert, &contents[0], key, &contents[1])
        .map_err(|e| e.to_string())?;
    let anchors = TrustAnchors::from_pem(ca, &contents[2]).map_err(|e| e.to_string())?;
    tls::client_config(&identity, &anchors, opts).map_err(|e| e.to_string())
}

/// How reloads are triggered.
#[derive(Clone, Copy, Debug)]
pub struct WatchSettings {
    /// React to file system events (inotify on Linux).
    pub file_events: bool,
    /// Re-read the files this often regardless; `None` turns polling off.
    pub poll_interval: Option<Duration>,
    /// Reload on SIGHUP.
    pub sighup: bool,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            file_events: true,
            poll_interval: Some(Duration::from_secs(5)),
            sighup: true,
        }
    }
}

/// Sets up the reload triggers for `paths` and returns the future that
/// calls `reload` whenever one of them may have changed; spawn it. The
/// triggers are in place when this returns, so no change made after it is
/// missed; one reload runs at the start to catch changes made before.
/// Dropping or aborting the future stops watching. The blocking file reads
/// run off the async threads.
pub fn watch_files<F>(
    paths: Vec<PathBuf>,
    settings: WatchSettings,
    reload: F,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    F: Fn() + Send + Sync + 'static,
{
    let reload = Arc::new(reload);
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let _ = tx.try_send("start");

    let watcher = if settings.file_events {
        spawn_fs_watcher(&paths, tx.clone())
    } else {
        None
    };

    #[cfg(unix)]
    let hangups = if settings.sighup {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP");
                None
            }
        }
    } else {
        None
    };

    async move {
        // Keep the watcher alive for as long as this future runs.
        let _watcher = watcher;
        let mut helpers = tokio::task::JoinSet::new();
        #[cfg(unix)]
        if let Some(mut hup) = hangups {
            let tx = tx.clone();
            helpers.spawn(async move {
                while hup.recv().await.is_some() {
                    if tx.send("SIGHUP").await.is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(every) = settings.poll_interval {
            let tx = tx.clone();
            helpers.spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    if tx.send("poll").await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);

        while let Some(why) = rx.recv().await {
            if why == "file event" {
                // Writers often touch a file several times (truncate,
                // write, rename); coalesce a burst into one reload.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            while rx.try_recv().is_ok() {}
            if why == "SIGHUP" {
                info!("SIGHUP received: reloading");
            }
            let reload = reload.clone();
            // Keep the caller's subscriber for the reload's log lines.
            let dispatch = tracing::dispatcher::get_default(|d| d.clone());
            let _ = tokio::task::spawn_blocking(move || {
                tracing::dispatcher::with_default(&dispatch, || reload())
            })
            .await;
        }
    }
}

fn spawn_fs_watcher(
    paths: &[PathBuf],
    tx: mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.try_send("file event");
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "file events unavailable; relying on polling");
                return None;
            }
        };
    // Watch directories, not files: rotation usually replaces a file by
    // renaming a new one over it, which ends a watch on the old inode.
    let dirs: BTreeSet<PathBuf> = paths
        .iter()
        .map(|p| match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        })
        .collect();
    for dir in dirs {
        if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
            warn!(dir = %dir.display(), error = %e, "cannot watch directory; relying on polling");
        }
    }
    Some(watcher)
}
