//! The fairness row's figures, computed from the four loads of a round, and
//! its Markdown table. Nothing here measures: the tests feed it reports
//! made by hand.

use std::fmt::Write as _;

use crate::ab::{median, Side};
use crate::load::Report;

/// What one side's server saw in one round: identity A's flood and
/// identity B's probe, each alone and both together.
#[derive(Debug)]
pub struct Phases {
    /// A's closed loop with the server to itself.
    pub a_alone: Report,
    /// B's open loop with the server to itself.
    pub b_alone: Report,
    /// A's closed loop while B's open loop runs.
    pub a_with_b: Report,
    /// B's open loop under A's flood.
    pub b_with_a: Report,
}

/// The row's goals, as the table prints them (from issue 19).
pub const GOAL_B_P99: &str = "<= 3";
pub const GOAL_B_FAILURES: &str = "0";
pub const GOAL_A_SHARE: &str = ">= 0.8";

impl Phases {
    /// B's p99 under A's flood over B's p99 alone: what the flood does to
    /// another caller's tail. `None` if either phase has no latencies.
    pub fn b_p99_ratio(&self) -> Option<f64> {
        ratio(p99(&self.b_with_a)?, p99(&self.b_alone)?)
    }

    /// B's failed calls under the flood: a call refused, timed out or lost
    /// counts here, since the open loop waits for every call it started.
    pub fn b_failures(&self) -> u64 {
        self.b_with_a.failures()
    }

    /// A's OK calls a second with B running over A's alone: whether
    /// sharing wastes the server (1.0: B's small load costs A nothing).
    pub fn a_share(&self) -> Option<f64> {
        ratio(self.a_with_b.ok_rate(), self.a_alone.ok_rate())
    }

    /// A's failed calls, alone and with B.
    pub fn a_failures(&self) -> u64 {
        self.a_alone.failures() + self.a_with_b.failures()
    }

    /// Server CPU per answered call with A alone, microseconds.
    pub fn cpu_per_call_alone(&self) -> Option<f64> {
        self.a_alone.cpu_per_call_us()
    }

    /// Server CPU per answered call with both loads, microseconds: the
    /// server's CPU in A's window over A's calls plus B's. B's window lies
    /// inside A's and is a little shorter, so B's calls are counted at B's
    /// rate over A's window.
    pub fn cpu_per_call_together(&self) -> Option<f64> {
        let cpu = self.a_with_b.server_cpu?.as_secs_f64();
        let calls = self.a_with_b.answered() as f64
            + self.b_with_a.rps() * self.a_with_b.window.as_secs_f64();
        (calls > 0.0).then(|| cpu * 1e6 / calls)
    }

    /// One progress line.
    pub fn summary(&self) -> String {
        format!(
            "B p99 {}us alone, {}us flooded (x{}), B failed {}; A ok/s {:.0} alone, {:.0} with B ({}), A failed {}",
            p99(&self.b_alone).map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            p99(&self.b_with_a).map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            fmt(self.b_p99_ratio(), 1),
            self.b_failures(),
            self.a_alone.ok_rate(),
            self.a_with_b.ok_rate(),
            fmt(self.a_share(), 3),
            self.a_failures(),
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "b_p99_ratio": self.b_p99_ratio(),
            "b_failures": self.b_failures(),
            "a_share": self.a_share(),
            "a_failures": self.a_failures(),
            "cpu_per_call_us_alone": self.cpu_per_call_alone(),
            "cpu_per_call_us_together": self.cpu_per_call_together(),
            "a_alone": self.a_alone.to_json(),
            "b_alone": self.b_alone.to_json(),
            "a_with_b": self.a_with_b.to_json(),
            "b_with_a": self.b_with_a.to_json(),
        })
    }
}

/// p99 in microseconds, if the report has latencies at all (a report with
/// none would give 0, and a ratio of 0 or infinity).
fn p99(r: &Report) -> Option<f64> {
    (!r.latency_us.is_empty()).then(|| r.percentile_us(0.99) as f64)
}

fn ratio(x: f64, y: f64) -> Option<f64> {
    let r = x / y;
    r.is_finite().then_some(r)
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The rounds of the row: each round ran both sides, in alternating order.
#[derive(Debug)]
pub struct FairnessResult {
    pub baseline: Side,
    pub candidate: Side,
    pub rounds: Vec<(Phases, Phases)>,
}

impl FairnessResult {
    fn side(&self, baseline: bool) -> impl Iterator<Item = &Phases> {
        self.rounds
            .iter()
            .map(move |(b, c)| if baseline { b } else { c })
    }

    /// Median over the rounds of one side's `figure`.
    pub fn median(&self, baseline: bool, figure: impl Fn(&Phases) -> Option<f64>) -> Option<f64> {
        median(self.side(baseline).filter_map(figure).collect())
    }

    /// One side's `figure` in each round, in order.
    pub fn per_round(
        &self,
        baseline: bool,
        figure: impl Fn(&Phases) -> Option<f64>,
    ) -> Vec<Option<f64>> {
        self.side(baseline).map(figure).collect()
    }

    /// One side's count summed over its rounds.
    pub fn total(&self, baseline: bool, count: impl Fn(&Phases) -> u64) -> u64 {
        self.side(baseline).map(count).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "baseline": self.baseline.name,
            "candidate": self.candidate.name,
            "rounds": self.rounds.iter().map(|(b, c)| serde_json::json!({
                "baseline": b.to_json(), "candidate": c.to_json(),
            })).collect::<Vec<_>>(),
        })
    }

    /// The row's table: for each side, the median of each figure over the
    /// rounds (bold) and the rounds themselves; the goals; then the
    /// absolute figures behind the ratios, as context.
    pub fn render(&self, out: &mut String, name: &str, what: &str) {
        let _ = writeln!(out, "\n### {name}: {what}\n");
        let _ = writeln!(
            out,
            "| figure | {} | {} | goal |",
            self.baseline.name, self.candidate.name
        );
        let _ = writeln!(out, "|---|---|---|---|");
        let ratio_cell = |baseline: bool, figure: fn(&Phases) -> Option<f64>| {
            let rounds: Vec<String> = self
                .per_round(baseline, figure)
                .into_iter()
                .map(|v| fmt(v, 3))
                .collect();
            format!(
                "**{}** ({})",
                fmt(self.median(baseline, figure), 3),
                rounds.join(" ")
            )
        };
        let count_cell = |baseline: bool, count: fn(&Phases) -> u64| {
            let rounds: Vec<String> = self.side(baseline).map(|p| count(p).to_string()).collect();
            format!("**{}** ({})", self.total(baseline, count), rounds.join(" "))
        };
        let rows: [(&str, String, String, &str); 4] = [
            (
                "B p99 under A's flood / B p99 alone",
                ratio_cell(true, Phases::b_p99_ratio),
                ratio_cell(false, Phases::b_p99_ratio),
                GOAL_B_P99,
            ),
            (
                "B failed calls under A's flood (total)",
                count_cell(true, Phases::b_failures),
                count_cell(false, Phases::b_failures),
                GOAL_B_FAILURES,
            ),
            (
                "A ok/s with B / A ok/s alone",
                ratio_cell(true, Phases::a_share),
                ratio_cell(false, Phases::a_share),
                GOAL_A_SHARE,
            ),
            (
                "A failed calls, alone and with B (total)",
                count_cell(true, Phases::a_failures),
                count_cell(false, Phases::a_failures),
                "",
            ),
        ];
        for (label, baseline, candidate, goal) in rows {
            let _ = writeln!(out, "| {label} | {baseline} | {candidate} | {goal} |");
        }
        let context = |baseline: bool| {
            let side = if baseline {
                &self.baseline
            } else {
                &self.candidate
            };
            let m = |figure: fn(&Phases) -> Option<f64>, decimals| {
                fmt(self.median(baseline, figure), decimals)
            };
            format!(
                "{}: B p99 alone {} us, under A's flood {} us; A ok/s alone {}, with B {}; \
                 server CPU/RPC A alone {} us, A and B {} us; B failed calls alone {}",
                side.name,
                m(|p| p99(&p.b_alone), 0),
                m(|p| p99(&p.b_with_a), 0),
                m(|p| Some(p.a_alone.ok_rate()), 0),
                m(|p| Some(p.a_with_b.ok_rate()), 0),
                m(Phases::cpu_per_call_alone, 1),
                m(Phases::cpu_per_call_together, 1),
                self.total(baseline, |p| p.b_alone.failures()),
            )
        };
        let _ = writeln!(
            out,
            "\nMedians over {} rounds (context only): {}. {}.",
            self.rounds.len(),
            context(true),
            context(false)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Kind;
    use std::time::Duration;

    /// A report of `ok` OK calls over `secs`, with these latencies (µs),
    /// `failed` failed calls, and `cpu_ms` of server CPU.
    fn report(secs: u64, ok: u64, failed: u64, latencies: &[u64], cpu_ms: Option<u64>) -> Report {
        let mut r = Report::new(Duration::from_secs(secs));
        for &us in latencies {
            r.latency_us.record(us).unwrap();
        }
        r.statuses.insert("OK".to_owned(), ok);
        if failed > 0 {
            r.statuses.insert("UNAVAILABLE".to_owned(), failed);
        }
        r.server_cpu = cpu_ms.map(Duration::from_millis);
        r
    }

    /// B: 100 calls at 1 ms alone; under the flood 98 at 2 ms and 2 at 50
    /// ms (p99 = 50 ms), 1 failed. A: 20,000 OK/s alone, 18,000 with B.
    fn phases() -> Phases {
        let flooded: Vec<u64> = [2_000; 98].into_iter().chain([50_000; 2]).collect();
        Phases {
            a_alone: report(2, 40_000, 0, &[], Some(800)),
            b_alone: report(1, 100, 0, &[1_000; 100], None),
            a_with_b: report(2, 36_000, 3, &[], Some(760)),
            b_with_a: report(1, 99, 1, &flooded, None),
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-3 * b.abs().max(1.0))
    }

    #[test]
    fn the_figures_of_a_round_are_computed_from_its_four_loads() {
        let p = phases();
        // hdrhistogram keeps 3 significant digits: 50,000 / 1,000 within 0.1%.
        assert!(close(p.b_p99_ratio(), 50.0), "{:?}", p.b_p99_ratio());
        assert_eq!(p.b_failures(), 1);
        assert!(close(p.a_share(), 0.9), "{:?}", p.a_share());
        assert_eq!(p.a_failures(), 3);
        // 800 ms over 40,000 calls; 760 ms over 36,003 of A's calls plus
        // B's 100 calls/s over A's 2 s.
        assert!(close(p.cpu_per_call_alone(), 20.0));
        assert!(close(p.cpu_per_call_together(), 760e3 / 36_203.0));
    }

    #[test]
    fn a_phase_without_calls_gives_no_ratio_rather_than_zero_or_infinity() {
        let mut p = phases();
        p.b_alone = report(1, 0, 0, &[], None);
        p.a_alone = report(2, 0, 5, &[], None);
        assert_eq!(p.b_p99_ratio(), None);
        assert_eq!(p.a_share(), None);
        assert_eq!(p.cpu_per_call_alone(), None);
        assert!(p.summary().contains("xn/a"), "{}", p.summary());
    }

    fn side(name: &str) -> Side {
        Side {
            name: name.to_owned(),
            command: String::new(),
            kind: Kind::Tls,
            spec: None,
        }
    }

    #[test]
    fn the_table_has_both_sides_medians_rounds_and_goals() {
        let mut fair = phases();
        fair.b_with_a = report(1, 100, 0, &[2_000; 100], None);
        let result = FairnessResult {
            baseline: side("6e7bfed"),
            candidate: side("candidate"),
            rounds: vec![(phases(), fair), (phases(), phases())],
        };
        assert!(close(result.median(true, Phases::b_p99_ratio), 50.0));
        // Candidate rounds: 2.0 and 50.0, median 26.
        assert!(close(result.median(false, Phases::b_p99_ratio), 26.0));
        assert_eq!(result.total(false, Phases::b_failures), 1);

        let mut table = String::new();
        result.render(&mut table, "fairness", "two identities");
        assert!(
            table.contains("\n### fairness: two identities\n"),
            "{table}"
        );
        assert!(table.contains("| figure | 6e7bfed | candidate | goal |"));
        let line = |start: &str| {
            table
                .lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no {start:?} in {table}"))
                .to_owned()
        };
        let b_p99 = line("| B p99 under A's flood / B p99 alone |");
        assert!(b_p99.contains("(2.000 "), "{b_p99}");
        assert!(b_p99.ends_with(&format!("| {GOAL_B_P99} |")), "{b_p99}");
        let b_failed = line("| B failed calls under A's flood");
        assert!(
            b_failed.contains("| **2** (1 1) | **1** (0 1) | 0 |"),
            "{b_failed}"
        );
        assert!(line("| A ok/s with B / A ok/s alone |").contains(GOAL_A_SHARE));
        assert!(line("| A failed calls").contains("| **6** (3 3) |"));
        assert!(table.contains("B p99 alone 1000 us"), "{table}");
    }

    #[test]
    fn a_result_serialises_every_round_of_both_sides() {
        let result = FairnessResult {
            baseline: side("b"),
            candidate: side("c"),
            rounds: vec![(phases(), phases())],
        };
        let json = result.to_json();
        assert_eq!(json["rounds"].as_array().map(Vec::len), Some(1));
        assert_eq!(json["rounds"][0]["candidate"]["b_failures"], 1);
        assert_eq!(
            json["rounds"][0]["baseline"]["b_with_a"]["statuses"]["OK"],
            99
        );
    }
}
