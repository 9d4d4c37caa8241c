use std::path::Path;

use super::*;

#[test]
fn empty_file_gives_defaults() {
    let c = Config::parse("", Path::new("x.toml")).unwrap();
    assert_eq!(c.dns.zone, "mesh");
    assert_eq!(c.wireguard.listen_port, 51820);
    assert!(c.dns.upstreams[0].starts_with("tls://"));
}

#[test]
fn wrong_type_names_the_key() {
    let e = Config::parse("[dns]\nlisten = [\"nonsense\"]\n", Path::new("x.toml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("dns.listen"), "{msg}");
}

#[test]
fn groups_parse_with_their_own_settings() {
    let c = Config::parse(
        "[groups.kids]\nlists = [\"k.txt\"]\nblock = [\"games.example\"]\nblocked_answer = \"nxdomain\"\n",
        Path::new("x.toml"),
    )
    .unwrap();
    let g = &c.groups["kids"];
    assert_eq!(g.lists.as_deref(), Some(&["k.txt".to_string()][..]));
    assert_eq!(g.blocked_answer, Some(BlockedAnswer::Nxdomain));
    let e = Config::parse("[groups.kids]\nblok = []\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("groups.kids"), "{e}");
}

#[test]
fn list_settings_take_durations_and_check_urls() {
    let c = Config::parse(
        "[filter]\nupdate_interval = \"12h\"\nlists = [\"https://l.example/a.txt\"]\n",
        Path::new("x.toml"),
    )
    .unwrap();
    assert_eq!(c.filter.update_interval, 12 * 3600);
    let c = Config::parse("[filter]\nupdate_interval = 600\n", Path::new("x.toml")).unwrap();
    assert_eq!(c.filter.update_interval, 600);
    for (text, key) in [
        (
            "[filter]\nupdate_interval = \"soon\"\n",
            "filter.update_interval",
        ),
        ("[filter]\nupdate_interval = 5\n", "filter.update_interval"),
        ("[filter]\nlists = [\"ftp://x/y\"]\n", "filter.lists"),
        ("[filter]\nmax_list_bytes = 10\n", "filter.max_list_bytes"),
    ] {
        let e = Config::parse(text, Path::new("x.toml")).unwrap_err();
        assert!(e.to_string().contains(key), "{text}: {e}");
    }
}

#[test]
fn unknown_key_is_refused() {
    let e = Config::parse("[dns]\nlisen = []\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("lisen"), "{e}");
}

#[test]
fn bad_blocked_answer_names_the_key() {
    let e = Config::parse("[dns]\nblocked_answer = \"maybe\"\n", Path::new("x.toml")).unwrap_err();
    assert!(e.to_string().contains("dns.blocked_answer"), "{e}");
}

mod fuzz {
    use super::*;

    #[test]
    fn fuzz_config() {
        let example = include_str!("../../config/cloudpc.example.toml").to_string();
        let seeds = vec![
            example,
            "[dns]\nlisten = [\"127.0.0.1:53\"]\nrate_limit = 5\n".into(),
        ];
        crate::fuzz::run("config", crate::fuzz::text(seeds), |text| {
            if let Err(e) = Config::parse(text, Path::new("cloudpc.toml")) {
                assert!(!e.to_string().is_empty(), "errors say what is wrong");
            }
        });
    }
}
