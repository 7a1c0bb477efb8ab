//! AFL++ target: see `fuzz_checks::rfc2253` for what is fed in and what is
//! asserted. Outside afl-fuzz the binary reads one input from stdin, which is
//! how scripts/fuzz.sh replays fuzz/regressions/rfc2253/.

fn main() {
    afl::fuzz!(|data: &[u8]| fuzz_checks::rfc2253::check(data));
}
