//! Behaviour of the whole filter: lists + config in, verdicts out.

use super::*;
use proptest::prelude::*;

fn list(origin: &str, text: &str) -> ListSource {
    ListSource {
        origin: origin.into(),
        text: text.into(),
    }
}

fn build(text: &str) -> (FilterSet, Vec<ListError>) {
    FilterSet::build(&[list("l.txt", text)], &[], &[])
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn abp_anchor_blocks_name_and_subdomains_only() {
    let (set, errors) = build("[Adblock Plus 2.0]\n! Title: t\n||ads.tracker.net^\n");
    assert!(errors.is_empty());
    assert_eq!(set.check("ads.tracker.net"), Verdict::Block);
    assert_eq!(set.check("a.b.ads.tracker.net"), Verdict::Block);
    assert_eq!(set.check("tracker.net"), Verdict::Pass);
    assert_eq!(set.check("myads.tracker.net"), Verdict::Pass);
    assert_eq!(set.len(), 1);
}

#[test]
fn hosts_line_blocks_subdomains() {
    let (set, _) =
        build("# hosts\n0.0.0.0 pixel.spy.org\n127.0.0.1 localhost\n:: beacon.spy.org\n");
    assert_eq!(set.check("pixel.spy.org"), Verdict::Block);
    assert_eq!(set.check("eu.pixel.spy.org"), Verdict::Block);
    assert_eq!(set.check("beacon.spy.org"), Verdict::Block);
    assert_eq!(set.check("localhost"), Verdict::Pass);
    assert_eq!(set.check("spy.org"), Verdict::Pass);
}

#[test]
fn plain_domain_line_blocks_subdomains() {
    let (set, _) = build("metrics.spy.org\n");
    assert_eq!(set.check("x.metrics.spy.org"), Verdict::Block);
}

#[test]
fn config_block_names_block_their_subdomains() {
    let (set, errors) = FilterSet::build(&[], &names(&["Spy.Org."]), &[]);
    assert!(errors.is_empty());
    assert_eq!(set.check("spy.org"), Verdict::Block);
    assert_eq!(set.check("cdn.spy.org"), Verdict::Block);
    assert_eq!(set.check("notspy.org"), Verdict::Pass);
}

#[test]
fn allow_beats_block_for_subdomains() {
    let lists = [list("l.txt", "||tracker.net^$important\n")];
    let (set, _) = FilterSet::build(
        &lists,
        &names(&["bad.org"]),
        &names(&["ok.tracker.net", "bad.org"]),
    );
    assert_eq!(set.check("ok.tracker.net"), Verdict::Allow);
    assert_eq!(set.check("x.ok.tracker.net"), Verdict::Allow);
    assert_eq!(set.check("other.tracker.net"), Verdict::Block);
    assert_eq!(set.check("www.bad.org"), Verdict::Allow);
}

#[test]
fn exception_in_one_list_beats_block_in_another() {
    let lists = [
        list("a.txt", "||tracker.net^\n"),
        list("b.txt", "@@||cdn.tracker.net^\n"),
    ];
    let (set, _) = FilterSet::build(&lists, &[], &[]);
    assert_eq!(set.check("img.cdn.tracker.net"), Verdict::Allow);
    assert_eq!(set.check("tracker.net"), Verdict::Block);
}

#[test]
fn engine_rules_match_wildcards_and_regexes() {
    let (set, errors) = build("||ads*.tracker.net^\n/track[0-9]+\\.spy\\.org/\n");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(set.counts().engine_rules, 2);
    assert_eq!(set.check("ads42.tracker.net"), Verdict::Block);
    assert_eq!(set.check("news.tracker.net"), Verdict::Pass);
    assert_eq!(set.check("track7.spy.org"), Verdict::Block);
    assert_eq!(set.check("trackx.spy.org"), Verdict::Pass);
}

#[test]
fn engine_exception_beats_plain_block() {
    let (set, _) = build("||tracker.net^\n@@||ok*.tracker.net^\n");
    assert_eq!(set.check("ok1.tracker.net"), Verdict::Allow);
    assert_eq!(set.check("bad.tracker.net"), Verdict::Block);
}

#[test]
fn badfilter_cancels_a_plain_block() {
    let lists = [
        list("a.txt", "||tracker.net^\n||spy.org^\n"),
        list("b.txt", "||tracker.net^$badfilter\n"),
    ];
    let (set, _) = FilterSet::build(&lists, &[], &[]);
    assert_eq!(set.check("tracker.net"), Verdict::Pass);
    assert_eq!(set.check("spy.org"), Verdict::Block);
}

#[test]
fn broken_line_is_reported_with_line_number_and_others_still_load() {
    let text = "||a.tracker.net^\n0.0.0.0 bad!name\n||b.tracker.net^\n";
    let (set, errors) = FilterSet::build(&[list("lists/x.txt", text)], &[], &[]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].line, 2);
    assert!(errors[0].to_string().starts_with("lists/x.txt:2: "));
    assert_eq!(set.check("a.tracker.net"), Verdict::Block);
    assert_eq!(set.check("b.tracker.net"), Verdict::Block);
}

#[test]
fn rejected_list_adds_nothing_and_other_lists_still_work() {
    let lists = [
        list("good.txt", "||tracker.net^\n"),
        list("bad.txt", "||spy.org^\n0.0.0.0 a/b\n0.0.0.0 c/d\n\0"),
    ];
    let (set, errors) = FilterSet::build(&lists, &[], &[]);
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].origin.as_str(), errors[0].line), ("bad.txt", 0));
    assert_eq!(set.check("tracker.net"), Verdict::Block);
    assert_eq!(set.check("spy.org"), Verdict::Pass);
}

#[test]
fn bad_config_names_are_reported_by_position() {
    let (_, errors) = FilterSet::build(&[], &names(&["ok.org", "not a name"]), &names(&["/x/"]));
    let places: Vec<_> = errors.iter().map(|e| (e.origin.as_str(), e.line)).collect();
    assert_eq!(places, vec![("filter.block", 2), ("filter.allow", 1)]);
}

#[test]
fn default_list_loads_cleanly_and_blocks_well_known_trackers() {
    let (set, errors) = FilterSet::build(&[default_list()], &[], &[]);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(set.len() >= 150, "{}", set.len());
    assert_eq!(
        set.counts().engine_rules,
        0,
        "the default list stays on the fast path"
    );
    assert_eq!(set.check("doubleclick.net"), Verdict::Block);
    assert_eq!(set.check("stats.g.doubleclick.net"), Verdict::Block);
    assert_eq!(set.check("www.google-analytics.com"), Verdict::Block);
    for allowed in [
        "example.com",
        "example.net",
        "www.example.org",
        "test",
        "localhost",
    ] {
        assert_eq!(set.check(allowed), Verdict::Pass, "{allowed}");
    }
}

#[test]
fn filter_swap_replaces_the_set_in_force() {
    let filter = Filter::new(FilterSet::default());
    let old = Arc::clone(&filter.load());
    filter.store(build("||tracker.net^\n").0);
    assert_eq!(old.check("tracker.net"), Verdict::Pass);
    assert_eq!(filter.load().check("tracker.net"), Verdict::Block);
}

#[test]
fn filter_set_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<FilterSet>();
    assert_send_sync::<Filter>();
}

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9-]{0,10}"
}

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 2..5).prop_map(|labels| labels.join("."))
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}", bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let lossy = String::from_utf8_lossy(&bytes).into_owned();
        let (set, _) = FilterSet::build(&[list("a", &text), list("b", &lossy)], std::slice::from_ref(&text), std::slice::from_ref(&lossy));
        let _ = set.check(&text);
        let _ = set.check(&lossy);
        let _ = check_list(&list("c", &text));
    }

    #[test]
    fn arbitrary_rule_lines_never_panic(lines in prop::collection::vec("[|@$^*/.a-z0-9=,~#!:_-]{0,30}", 0..20)) {
        let (set, _) = build(&lines.join("\n"));
        for line in &lines {
            let _ = set.check(line);
        }
    }

    #[test]
    fn listed_names_and_subdomains_block_and_unrelated_names_pass(
        listed in prop::collection::hash_set(domain(), 1..30),
        sub in label(),
        unrelated in prop::collection::vec(domain(), 1..10),
        style in 0..3usize,
    ) {
        let text: String = listed.iter().map(|d| match style {
            0 => format!("||{d}^\n"),
            1 => format!("0.0.0.0 {d}\n"),
            _ => format!("{d}\n"),
        }).collect();
        let (set, errors) = build(&text);
        prop_assert!(errors.is_empty());
        for d in &listed {
            prop_assert_eq!(set.check(d), Verdict::Block);
            prop_assert_eq!(set.check(&format!("{sub}.{d}")), Verdict::Block);
        }
        let unrelated = unrelated.iter().flat_map(|u| [u.clone(), format!("x{u}")]);
        for u in unrelated {
            let covered = listed.iter().any(|d| u == *d || u.ends_with(&format!(".{d}")));
            if !covered {
                prop_assert_eq!(set.check(&u), Verdict::Pass);
            }
        }
    }
}

/// Builds a million generated names and checks verdicts. Run in release for timings:
/// `cargo test --release --lib filter -- --ignored --nocapture`.
#[test]
#[ignore]
fn million_names_build_and_check() {
    use std::fmt::Write;
    use std::time::Instant;
    const N: usize = 1_000_000;
    let rss_before = proc_status_kib("VmRSS");
    let mut text = String::with_capacity(N * 32);
    for i in 0..N {
        let _ = match i % 3 {
            0 => writeln!(text, "||ad{i:x}.tracker{}.net^", i % 977),
            1 => writeln!(text, "0.0.0.0 px{i:x}.spy{}.org", i % 991),
            _ => writeln!(text, "m{i:x}.metrics{}.io", i % 983),
        };
    }
    let source = list("million.txt", &text);
    drop(text);

    let started = Instant::now();
    let checked = check_list(&source);
    let check_time = started.elapsed();
    let started = Instant::now();
    let (set, errors) = FilterSet::build(
        std::slice::from_ref(&source),
        &[],
        &names(&["ad3.tracker3.net"]),
    );
    let build_time = started.elapsed();
    drop(source);
    let rss_set = proc_status_kib("VmRSS").saturating_sub(rss_before);
    let peak_build = proc_status_kib("VmHWM");

    assert_eq!(checked.map(|s| s.rules), Ok(N));
    assert!(errors.is_empty());
    assert_eq!(set.counts().blocked_names, N);
    assert_eq!(set.check("ad0.tracker0.net"), Verdict::Block);
    assert_eq!(set.check("www.px1.spy1.org"), Verdict::Block);
    assert_eq!(set.check("x.ad3.tracker3.net"), Verdict::Allow);
    assert_eq!(set.check("ad0.tracker1.net"), Verdict::Pass);

    let third = (N / 3) as u64;
    let queries: Vec<(String, Verdict)> = (0..N as u64)
        .map(|i| {
            let j = (i * 7919 % third) * 3;
            match i % 4 {
                0 => {
                    let verdict = if j == 3 {
                        Verdict::Allow
                    } else {
                        Verdict::Block
                    };
                    (format!("www.ad{j:x}.tracker{}.net", j % 977), verdict)
                }
                1 => (format!("cdn{i}.images.news{}.org", i % 100), Verdict::Pass),
                2 => (format!("api.app{i}.shop.com"), Verdict::Pass),
                _ => (
                    format!("q{i}.m{:x}.metrics{}.io", j + 2, (j + 2) % 983),
                    Verdict::Block,
                ),
            }
        })
        .collect();
    let started = Instant::now();
    let mut wrong = 0usize;
    for (q, expected) in &queries {
        wrong += usize::from(set.check(q) != *expected);
    }
    let per_check = started.elapsed() / queries.len() as u32;
    assert_eq!(wrong, 0);

    // One wildcard rule puts every name the hash set does not block through the engine.
    let (mixed, _) = FilterSet::build(&[list("w.txt", "||ads*.banners.net^\n")], &[], &[]);
    let started = Instant::now();
    for (q, _) in queries.iter().take(100_000) {
        std::hint::black_box(mixed.check(q));
    }
    let per_engine_check = started.elapsed() / 100_000;
    assert_eq!(mixed.check("ads9.banners.net"), Verdict::Block);

    println!(
        "1M names: check_list {check_time:?}, build {build_time:?}, {per_check:?} per check \
         ({per_engine_check:?} through the engine), \
         name sets {} MiB, RSS kept by the set {} MiB, peak RSS through build {} MiB \
         (list text included)",
        set.name_set_bytes() / (1024 * 1024),
        rss_set / 1024,
        peak_build / 1024,
    );
}

/// A `kB` field of `/proc/self/status` (0 where there is none).
fn proc_status_kib(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
