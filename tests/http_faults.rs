//! A fault test on real processes (issue 7): three `http_node` processes replicating with
//! synchronized ack (send options 6), a few client threads under a bounded, paced request load,
//! and one node killed with SIGKILL every ~1.5 s in rotation, then restarted on the same ports.
//!
//! Each client thread is one user with its own cookie jar: it logs in once, then loops on
//! `GET /app/counter`, which increments a counter in its session. A request answered 200 is
//! *acknowledged*. With http_node's `--strict-replication` (the `strict` variants) a 200 means
//! `SessionRequest::finish()` returned `Ok`: every member the serving node knew applied the change;
//! without it (Tomcat's `ReplicationValve` behaviour) the node answers 200 even when `finish()`
//! reported members that did not apply it. A request that fails or times out is not acknowledged
//! and may or may not have applied. The load balancer is a sticky one: each user has a home node
//! and goes there while it is routable; while it is down the user goes to the next routable
//! node, with the same cookie. A killed node is routable again only once its restart is ready
//! and sees both other members, and both others see it.
//!
//! Checked: every acknowledged counter is above the previous acknowledged one of that user (an
//! acknowledged change lost mid-run would show as a counter going back), no request ever lands on
//! a node that no longer knows the session (the app answers 401), and at the end every
//! user's counter, read on its home node, is at least its last acknowledged value and its profile is
//! still there. Availability is checked too: the control fails no request, and a run with faults
//! at most [`MAX_FAILED_PER_KILL`] per kill (a cluster that keeps data by refusing every change
//! fails). The figures are printed (`--nocapture`) and recorded in docs/RELIABILITY.md.
//!
//! Faults are one at a time: before each kill the test waits until the three nodes are ready and
//! see each other. Two nodes down at once is outside what one backup copy can survive.
//!
//! `cargo test` runs the control (same load and checks, no faults) and the two strict variants
//! (DeltaManager and BackupManager); the variants that answer 200 on a failed replication are
//! ignored with the reason. All of them:
//! `cargo test --test http_faults -- --include-ignored --nocapture`.

mod common;

use common::client::Client;
use common::procs::{example_exe, try_json_number, Output, Proc};
use common::wait_until;
use parking_lot::Mutex;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the load and the faults last.
const RUN: Duration = Duration::from_secs(12);
/// Time between two kills (from one kill to the next, when the restart was quick enough).
const KILL_EVERY: Duration = Duration::from_millis(1500);
/// At least this many kills, however slow the machine (the run is extended up to `RUN_MAX`).
const MIN_KILLS: u32 = 5;
/// How long the control runs (the same load, no faults).
const CONTROL_RUN: Duration = Duration::from_secs(2);
/// Hard bound on the faulty phase.
const RUN_MAX: Duration = Duration::from_secs(30);
/// Users (client threads).
const USERS: usize = 4;
/// At most this many counter requests per user.
const MAX_REQUESTS_PER_USER: u64 = 3000;
/// Pause between two requests of one user: the load is paced.
const PACE: Duration = Duration::from_millis(5);
/// Client deadline per request (connect, write, read).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for a node to start, rejoin, or the cluster to be whole.
const LIMIT: Duration = Duration::from_secs(20);
/// Failed requests (I/O error, timeout, any status but 200) allowed per kill in a run with
/// faults. A kill costs each user whose node dies a refused connection or two, and a request
/// in flight on a change the dead member does not acknowledge a 503 (strict) or nothing: the
/// worst measured was 77 failed in a run of 8 kills (under 10 per kill: DeltaManager, strict,
/// debug build, 2 busy cores); BackupManager strict runs fail 10-20 requests in 8 kills
/// (release build, 30 runs, docs/RELIABILITY.md). 16 per kill leaves a margin of 1.6 over the
/// worst and still fails a cluster that stops acknowledging (answers 503 from the first kill
/// on: about 4 users x 150 requests a second).
const MAX_FAILED_PER_KILL: u64 = 16;

// ---------------------------------------------------------------------------------------------
// http_node processes

fn http_node_exe() -> PathBuf {
    example_exe("http_node")
}

/// Runs of `http_node` processes, as the shared [`Proc`] (one run each: a restart is a new one).
impl Proc {
    /// Starts node `name` from `examples/config/serverN.toml`, on `http` and `receiver` (port 0:
    /// the OS chooses), listing `members` as static members. `Err` with the output if it did
    /// not print its ready line (a port still taken, say).
    fn spawn(
        name: &str,
        manager: &str,
        strict: bool,
        http: SocketAddr,
        receiver: SocketAddr,
        members: &[SocketAddr],
    ) -> Result<Proc, String> {
        let mut cmd = Command::new(http_node_exe());
        let n = name.trim_start_matches("node");
        let config =
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/config/server{n}.toml"));
        cmd.arg("--config").arg(&config);
        cmd.args(["--name", name, "--manager", manager])
            .args(["--send-options", "6"])
            .args(strict.then_some("--strict-replication"))
            .args(["--http", &http.to_string()])
            .args(["--receiver", &receiver.to_string()])
            .args(["--http-threads", "4", "--stop-on-stdin-eof"]);
        // The files' static members are at fixed ports: never let a test node reach them.
        cmd.arg("--no-members");
        for m in members {
            cmd.args(["--member", &m.to_string()]);
        }
        // TRIBECAST_FAULTS_LOG=tribecast=debug for a post-mortem.
        cmd.env(
            "RUST_LOG",
            std::env::var("TRIBECAST_FAULTS_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::piped());
        let mut p = Proc::start(name, &mut cmd).expect("spawn http_node");
        // A failed run saves every run's output to files: no dump on stderr.
        p.dump_on_panic = false;
        // `http_node node1 listening on http://127.0.0.1:P (cluster receiver 127.0.0.1:Q)`,
        // or an exit (a port taken).
        let deadline = Instant::now() + LIMIT;
        let line = loop {
            {
                let mut lines = p.out.lines.lock();
                if let Some((_, l)) = lines
                    .iter()
                    .find(|(_, l)| l.contains(" listening on http://"))
                {
                    break l.clone();
                }
                let _ = p
                    .out
                    .changed
                    .wait_for(&mut lines, Duration::from_millis(50));
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                p.exited = true;
                return Err(format!("{name} exited ({status})\n{}", p.text()));
            }
            if Instant::now() >= deadline {
                return Err(format!("{name} printed no ready line\n{}", p.text()));
            }
        };
        p.read_addresses(&line);
        Ok(p)
    }

    /// `/app/health` body, if it answered 200.
    fn health(&self) -> Option<String> {
        let mut c = Client::new();
        c.timeout = Duration::from_secs(2);
        match c.get(self.http, "/app/health") {
            Ok(r) if r.status == 200 => Some(r.body),
            _ => None,
        }
    }

    /// Ready, and sees exactly the two other members.
    fn whole(&self) -> bool {
        self.health()
            .is_some_and(|h| h.contains("\"ready\":true") && h.matches("\"name\":").count() == 2)
    }
}

/// `HH:MM:SS.mmm` UTC, as in the nodes' log lines.
fn utc_time_of_day() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (s, ms) = (ms / 1000 % 86_400, ms % 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, s / 60 % 60, s % 60)
}

/// The string after `"key":"` in a flat JSON object.
fn json_string<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    json.split(&pat).nth(1).and_then(|r| r.split('"').next())
}

// ---------------------------------------------------------------------------------------------
// The load balancer and the users

/// Whether two session ids name the same session: the same random part, whatever the route
/// (a session rebound to another node's route after a failover keeps its random part).
fn same_session(a: &str, b: &str) -> bool {
    let random = |s: &str| s.split_once('.').map_or(s, |(r, _)| r).to_string();
    random(a) == random(b)
}

/// Which nodes take requests: a sticky load balancer's view.
struct Router {
    http: Vec<SocketAddr>,
    up: Mutex<Vec<bool>>,
}

impl Router {
    /// The user's home node if routable, else the next routable one.
    fn pick(&self, home: usize) -> Option<(usize, SocketAddr)> {
        let up = self.up.lock();
        (0..up.len())
            .map(|k| (home + k) % up.len())
            .find(|&i| up[i])
            .map(|i| (i, self.http[i]))
    }

    fn set(&self, i: usize, routable: bool) {
        self.up.lock()[i] = routable;
    }
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
}

/// What one user saw.
#[derive(Debug, Default, Clone)]
struct UserReport {
    user: usize,
    session: String,
    requests: u64,
    acknowledged: u64,
    failed: u64,
    /// Failures by cause: I/O (refused, reset, timeout), and by HTTP status.
    io_errors: u64,
    statuses: Vec<(u16, u64)>,
    last_acknowledged: u64,
    /// Acknowledged values not above the highest acknowledged before: how many, and the first
    /// (highest acknowledged before and its node, value acknowledged and its node, UTC time of
    /// day, to read beside the nodes' logs).
    regressions: u64,
    first_regression: Option<(u64, String, u64, String, String)>,
    /// Node of the highest acknowledged value.
    last_node: String,
    /// Answers for another session than the user's (the node did not know it: a new one):
    /// (node, new session, UTC time of day).
    other_session: Vec<(String, String, String)>,
    /// Where the final read went, and what it said.
    final_node: String,
    final_counter: Option<u64>,
    final_profile: Option<u16>,
}

fn user_loop(
    user: usize,
    router: &Router,
    stop: &AtomicBool,
    totals: &Totals,
    started: &AtomicU64,
) -> (Client, UserReport) {
    let home = user % router.http.len();
    let mut c = Client::new();
    c.timeout = CLIENT_TIMEOUT;
    let mut rep = UserReport {
        user,
        ..UserReport::default()
    };
    // Log in once (retried until a node answers 200).
    let account = if user.is_multiple_of(2) {
        [("user", "admin"), ("pass", "secret")]
    } else {
        [("user", "guest"), ("pass", "guest")]
    };
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "user {user} could not log in");
        if let Some((_, addr)) = router.pick(home) {
            if matches!(c.post_form(addr, "/app/login", &account), Ok(r) if r.status == 200) {
                break;
            }
        }
        std::thread::sleep(PACE);
    }
    rep.session = c.cookie("JSESSIONID").expect("session cookie").to_string();
    started.fetch_add(1, Ordering::SeqCst);
    let mut statuses = std::collections::BTreeMap::new();
    while !stop.load(Ordering::SeqCst) && rep.requests < MAX_REQUESTS_PER_USER {
        let Some((i, addr)) = router.pick(home) else {
            std::thread::sleep(PACE);
            continue;
        };
        rep.requests += 1;
        totals.requests.fetch_add(1, Ordering::Relaxed);
        match c.get(addr, "/app/counter") {
            Ok(r) if r.status == 200 => {
                let n = try_json_number(&r.body, "counter").expect("counter in the answer");
                let session = json_string(&r.body, "session").unwrap_or("");
                if session != rep.session && same_session(session, &rep.session) {
                    // Rebound to the serving node's route after its node left (the
                    // JvmRouteBinderValve's change of id): the same session, a new cookie.
                    rep.session = session.to_string();
                }
                if session != rep.session {
                    // The node made a new session: the user's was not there. The jar now holds
                    // the new cookie, so this user's figures end here.
                    rep.other_session.push((
                        format!("node{}", i + 1),
                        session.to_string(),
                        utc_time_of_day(),
                    ));
                    rep.failed += 1;
                    totals.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if n <= rep.last_acknowledged {
                    rep.regressions += 1;
                    rep.first_regression.get_or_insert_with(|| {
                        (
                            rep.last_acknowledged,
                            rep.last_node.clone(),
                            n,
                            format!("node{}", i + 1),
                            utc_time_of_day(),
                        )
                    });
                } else {
                    rep.last_acknowledged = n;
                    rep.last_node = format!("node{}", i + 1);
                }
                rep.acknowledged += 1;
                totals.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) if r.status == 401 => {
                // The node did not know the session (the app makes sessions at login only):
                // as a new session was before, the user's session is gone for it.
                rep.other_session.push((
                    format!("node{}", i + 1),
                    "none (401)".into(),
                    utc_time_of_day(),
                ));
                rep.failed += 1;
                totals.failed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Ok(r) => {
                *statuses.entry(r.status).or_insert(0u64) += 1;
                rep.failed += 1;
                totals.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                rep.io_errors += 1;
                rep.failed += 1;
                totals.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(PACE);
    }
    rep.statuses = statuses.into_iter().collect();
    (c, rep)
}

// ---------------------------------------------------------------------------------------------
// The scenario

struct Figures {
    manager: String,
    strict: bool,
    elapsed: Duration,
    requests: u64,
    acknowledged: u64,
    failed: u64,
    kills: u32,
    restarts: u32,
    restart_attempts: u32,
    /// Per kill: the victim, the UTC time of day of the kill, how long until its restart
    /// printed its ready line, and until the cluster was whole again.
    outages: Vec<Outage>,
    users: Vec<UserReport>,
}

/// A kill: the victim, the UTC time of day, how long until its restart was ready and until
/// the cluster was whole again.
type Outage = (String, String, Duration, Duration);

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "fault test, {} manager, send options 6{}: {:.1} s, {} requests, {} acknowledged, {} failed, {} kills, {} restarts ({} attempts)",
            self.manager,
            if self.strict {
                ", --strict-replication"
            } else {
                ""
            },
            self.elapsed.as_secs_f64(),
            self.requests,
            self.acknowledged,
            self.failed,
            self.kills,
            self.restarts,
            self.restart_attempts
        )?;
        let span = |d: &dyn Fn(&Outage) -> Duration| {
            let ms = self.outages.iter().map(|o| d(o).as_millis());
            Some((ms.clone().min()?, ms.max()?))
        };
        if let (Some(ready), Some(whole)) = (span(&|o| o.2), span(&|o| o.3)) {
            writeln!(
                f,
                "  restarts: ready {}-{} ms after the kill, cluster whole {}-{} ms after it; kills {:?}",
                ready.0,
                ready.1,
                whole.0,
                whole.1,
                self.outages
                    .iter()
                    .map(|o| format!("{} at {}", o.0, o.1))
                    .collect::<Vec<_>>()
            )?;
        }
        for u in &self.users {
            writeln!(
                f,
                "  user {}: {} requests, {} acknowledged, {} failed (I/O {}, statuses {:?}), last acknowledged {}, final {:?} on {} (profile {:?}), {} regressions (first {:?}), other sessions {:?}",
                u.user,
                u.requests,
                u.acknowledged,
                u.failed,
                u.io_errors,
                u.statuses,
                u.last_acknowledged,
                u.final_counter,
                u.final_node,
                u.final_profile,
                u.regressions,
                u.first_regression,
                u.other_session
            )?;
        }
        Ok(())
    }
}

/// Writes every process's output to a file for the post-mortem; returns its path.
fn save_logs(label: &str, runs: &[(String, Arc<Output>)]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("http_faults_{label}.log"));
    if let Ok(mut f) = std::fs::File::create(&path) {
        for (name, out) in runs {
            let _ = writeln!(f, "===== {name} =====");
            for (_, l) in out.lines.lock().iter() {
                let _ = writeln!(f, "{l}");
            }
        }
    }
    path
}

/// One run with `manager`; `strict`: http_node's `--strict-replication` (a change that some
/// member did not apply answers 503, not 200); `faults`: kill and restart nodes (without, the
/// control: the same load and checks for `CONTROL_RUN`, which must find nothing).
fn run(manager: &str, strict: bool, faults: bool) -> Figures {
    common::init_logs();
    let label = format!(
        "{manager}{}{}",
        if strict { "_strict" } else { "" },
        if faults { "" } else { "_control" }
    );
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let spawn = |name: &str, members: &[SocketAddr]| {
        Proc::spawn(name, manager, strict, any, any, members).expect(name)
    };
    let n1 = spawn("node1", &[]);
    let n2 = spawn("node2", &[n1.receiver]);
    let n3 = spawn("node3", &[n1.receiver, n2.receiver]);
    let mut nodes = vec![n1, n2, n3];
    // Every run of every node, for the logs.
    let mut runs: Vec<(String, Arc<Output>)> = nodes
        .iter()
        .map(|n| (format!("{} (run 1)", n.name), n.out.clone()))
        .collect();
    let whole = |nodes: &[Proc]| nodes.iter().all(Proc::whole);
    assert!(
        wait_until(LIMIT, || whole(&nodes)),
        "the three nodes never saw each other"
    );
    let router = Router {
        http: nodes.iter().map(|n| n.http).collect(),
        up: Mutex::new(vec![true; 3]),
    };
    let stop = AtomicBool::new(false);
    let totals = Totals::default();
    let logged_in = AtomicU64::new(0);
    let mut kills = 0u32;
    let mut restarts = 0u32;
    let mut restart_attempts = 0u32;
    let mut outages = Vec::new();
    let t0 = Instant::now();
    let results = std::thread::scope(|s| {
        let users: Vec<_> = (0..USERS)
            .map(|u| {
                let (router, stop, totals, logged_in) = (&router, &stop, &totals, &logged_in);
                s.spawn(move || user_loop(u, router, stop, totals, logged_in))
            })
            .collect();
        // The faults, once every user is logged in.
        let ok = wait_until(LIMIT, || logged_in.load(Ordering::SeqCst) == USERS as u64);
        let start = Instant::now();
        let mut problem = None;
        if !ok {
            problem = Some("not every user logged in".to_string());
        }
        if !faults && problem.is_none() {
            std::thread::sleep(CONTROL_RUN); // the load runs meanwhile
        }
        while faults
            && problem.is_none()
            && (start.elapsed() < RUN || kills < MIN_KILLS)
            && start.elapsed() < RUN_MAX
        {
            // Paced: the next kill comes KILL_EVERY after the previous one.
            let due = start + KILL_EVERY * (kills + 1);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // One fault at a time: the cluster is whole before the next kill.
            if !wait_until(LIMIT, || whole(&nodes)) {
                problem = Some(format!("cluster not whole before kill {}", kills + 1));
                break;
            }
            let victim = kills as usize % nodes.len();
            let killed_at = (Instant::now(), utc_time_of_day());
            nodes[victim].kill();
            router.set(victim, false);
            kills += 1;
            // Restart on the same ports; a port briefly taken by someone else is retried.
            let (name, http, receiver) = {
                let v = &nodes[victim];
                (v.name.clone(), v.http, v.receiver)
            };
            let members: Vec<SocketAddr> = nodes
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != victim)
                .map(|(_, n)| n.receiver)
                .collect();
            let deadline = Instant::now() + LIMIT;
            let restarted = loop {
                restart_attempts += 1;
                match Proc::spawn(&name, manager, strict, http, receiver, &members) {
                    Ok(p) => break Some(p),
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("restart of {name} failed, retrying: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => {
                        problem = Some(format!("cannot restart {name}: {e}"));
                        break None;
                    }
                }
            };
            let Some(p) = restarted else { break };
            restarts += 1;
            let ready_after = killed_at.0.elapsed();
            runs.push((format!("{name} (run {})", restarts + 1), p.out.clone()));
            nodes[victim] = p;
            // Routable once it is ready and sees the others, and they see it.
            if !wait_until(LIMIT, || whole(&nodes)) {
                problem = Some(format!("{name} did not rejoin after restart {restarts}"));
                break;
            }
            outages.push((name, killed_at.1, ready_after, killed_at.0.elapsed()));
            router.set(victim, true);
        }
        stop.store(true, Ordering::SeqCst);
        let results: Vec<_> = users
            .into_iter()
            .map(|h| h.join().expect("user thread"))
            .collect();
        if let Some(p) = problem {
            let path = save_logs(&label, &runs);
            panic!("{p}; logs in {}", path.display());
        }
        results
    });
    let elapsed = t0.elapsed();
    // The final read, on the user's home node (all three are live now), with the user's cookie.
    let mut users = Vec::new();
    for (mut c, mut rep) in results {
        let node = &nodes[rep.user % nodes.len()];
        rep.final_node = node.name.clone();
        let peek = c.get(node.http, "/app/counter?peek");
        rep.final_counter = peek.ok().and_then(|r| {
            let same =
                json_string(&r.body, "session").is_some_and(|s| same_session(s, &rep.session));
            try_json_number(&r.body, "counter").filter(|_| r.status == 200 && same)
        });
        rep.final_profile = c.get(node.http, "/app/profile").ok().map(|r| {
            if r.body.contains("\"username\":") {
                r.status
            } else {
                0
            }
        });
        users.push(rep);
    }
    let figures = Figures {
        manager: manager.into(),
        strict,
        elapsed,
        requests: totals.requests.load(Ordering::SeqCst),
        acknowledged: totals.acknowledged.load(Ordering::SeqCst),
        failed: totals.failed.load(Ordering::SeqCst),
        kills,
        restarts,
        restart_attempts,
        outages,
        users,
    };
    let path = save_logs(&label, &runs);
    println!("{figures}logs in {}", path.display());
    let lost: Vec<&UserReport> = figures
        .users
        .iter()
        .filter(|u| {
            u.regressions > 0
                || !u.other_session.is_empty()
                || u.final_counter.is_none_or(|n| n < u.last_acknowledged)
                || u.final_profile != Some(200)
        })
        .collect();
    if !lost.is_empty() || (faults && figures.kills < MIN_KILLS) {
        panic!(
            "acknowledged changes or sessions lost (or too few kills):\n{figures}logs in {}",
            path.display()
        );
    }
    assert!(figures.acknowledged > 0, "{figures}");
    if faults {
        let bound = MAX_FAILED_PER_KILL * u64::from(figures.kills);
        assert!(
            figures.failed <= bound,
            "{} failed requests, more than {bound} ({MAX_FAILED_PER_KILL} per kill):\n{figures}logs in {}",
            figures.failed,
            path.display()
        );
    } else {
        assert_eq!(
            figures.failed,
            0,
            "the control failed requests:\n{figures}logs in {}",
            path.display()
        );
    }
    figures
}

/// The control: the same processes, load and checks without faults find nothing (the checks
/// do not fail on their own), for both managers.
#[test]
fn control_without_faults_loses_nothing() {
    run("delta", true, false);
    run("backup", true, false);
}

/// DeltaManager, synchronized ack, `--strict-replication`: no acknowledged change lost. It lost
/// one increment in 3 of 10 runs before the state transfer had a catch-up (a change the donor's
/// snapshot missed, acknowledged by a member that did not know the joiner yet); the digest that
/// member sends when it sees the joiner now brings it (docs/RELIABILITY.md has the figures).
#[test]
fn delta_manager_strict_replication_loses_no_acknowledged_change_under_sigkill() {
    run("delta", true, true);
}

/// BackupManager, synchronized ack, `--strict-replication`: no acknowledged change or session
/// lost. It lost one in 3 of 15 runs (and 3 of 34 before) while a fetch for the user's request
/// and the failover of the dead primary's backup claimed the session at once with one epoch:
/// when the backup won the tie, the member serving the user yielded while the request ran, and
/// the request found no session or its 200 covered no member that kept the change. A take-over
/// without the primary's answer now outranks that failover, and a request whose session moved
/// away while it ran is refused (docs/RELIABILITY.md: 30 of 30 runs lost nothing since).
#[test]
fn backup_manager_strict_replication_loses_no_acknowledged_change_under_sigkill() {
    run("backup", true, true);
}

// The other variants with faults expose real losses at some rate (docs/RELIABILITY.md, "Fault
// test on real processes", has the figures and the log lines): they are ignored until the
// library is fixed. Run them with `cargo test --test http_faults -- --ignored --nocapture`.

#[test]
#[ignore = "bug: without --strict-replication http_node answers 200 although finish() said a \
            member did not apply the change; a restarted DeltaManager node refuses a delta that \
            arrives before its state transfer ('an earlier change is missing; asked for the \
            session'), becomes ready with a snapshot without it and serves the stale copy: 1 \
            acknowledged increment lost in 3 of 23 runs on 2-3 busy cores (0 of 10 idle)"]
fn delta_manager_answering_200_on_failed_replication_under_sigkill() {
    run("delta", false, true);
}

#[test]
#[ignore = "no guarantee to check: without --strict-replication http_node answers 200 although \
            finish() said the backup did not apply the change. Measured with the fixes of the \
            strict variant: 9 of 9 runs lost nothing (0-8 failed requests); on 4a102a8 1 of \
            6 lost a session (the fetch/failover race, 1-6 failed requests), and the refusal loop of docs/RELIABILITY.md failure 3 did not come back"]
fn backup_manager_answering_200_on_failed_replication_under_sigkill() {
    run("backup", false, true);
}
