//! AFL++ target: see `fuzz_checks::policy` for what is fed in and what is
//! asserted. Outside afl-fuzz the binary reads one input from stdin, which is
//! how scripts/fuzz.sh replays fuzz/regressions/policy/.

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz_checks::policy::check(data));
}
