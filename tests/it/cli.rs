//! The command line: flags reach the configuration, help teaches, odd input gets a clear error.

use std::io::Read;
use std::process::{Command, Stdio};

use apunet::cli::{self, Command as Sub, apply_overrides, parse_from};
use apunet::model::NormKind;
use apunet::train::RunConfig;

fn train_config(args: &[&str]) -> RunConfig {
    let mut all = vec!["apunet", "train", "--data", "d.npz", "--out", "o"];
    all.extend_from_slice(args);
    let Sub::Train(a) = parse_from(all).unwrap().command else { panic!("not train") };
    let mut cfg = RunConfig::default();
    apply_overrides(&mut cfg, &a);
    cfg
}

#[test]
fn every_train_flag_reaches_the_config() {
    let cfg = train_config(&[
        "--epochs",
        "7",
        "--batch-size",
        "3",
        "--lr",
        "0.01",
        "--beta",
        "0.5",
        "--kl-warmup-epochs",
        "2",
        "--grad-clip-norm",
        "5",
        "--weight-decay",
        "0.001",
        "--latent-dim",
        "4",
        "--seed",
        "9",
        "--filters",
        "8,16,32",
        "--norm",
        "batch",
        "--transformer-levels",
        "0,1",
        "--transformer-heads",
        "2",
        "--annotator",
        "majority",
        "--val-fraction",
        "0.3",
        "--select",
        "ged",
        "--extra",
        "x.npz",
        "--extra-ratio",
        "0.25",
        "--patch",
        "32",
        "--figure-every",
        "3",
    ]);
    let (t, m) = (&cfg.train, &cfg.model);
    assert_eq!((t.epochs, t.batch_size, t.lr, t.beta, t.kl_warmup_epochs), (7, 3, 0.01, 0.5, 2));
    assert_eq!((t.grad_clip_norm, t.weight_decay, t.seed), (Some(5.0), Some(0.001), 9));
    assert_eq!((m.latent_dim, m.filters.clone(), m.norm), (4, vec![8, 16, 32], NormKind::Batch));
    assert_eq!((m.transformer_levels.clone(), m.transformer_heads), (apunet::model::TransformerLevels::Levels(vec![0, 1]), 2));
    assert_eq!(t.annotator, apunet::data::AnnotatorChoice::Majority);
    assert_eq!((t.val_fraction, t.select, t.extra.as_deref()), (0.3, apunet::train::Select::Ged, Some("x.npz")));
    assert_eq!((t.extra_ratio, t.patch, t.figure_every), (0.25, Some(32), 3));
    assert!(m.attention_gates);
    cfg.validate().unwrap();
    // Flags left out keep the defaults.
    assert_eq!(train_config(&[]), RunConfig::default());
}

#[test]
fn no_attention_means_a_plain_u_net() {
    let cfg = train_config(&["--no-attention"]);
    assert!(!cfg.model.attention_gates);
    assert!(cfg.model.transformer_levels().is_empty(), "--no-attention must turn the transformer off too");
    assert!(train_config(&["--transformer-levels", "none"]).model.transformer_levels().is_empty());
}

#[test]
fn odd_flag_values_are_refused_or_replaced_never_appended() {
    // A repeated list flag must not append to the first one.
    match parse_from(["apunet", "train", "--data", "d", "--out", "o", "--filters", "8,16", "--filters", "4,8"]) {
        Ok(c) => {
            let Sub::Train(a) = c.command else { panic!() };
            assert_eq!(a.filters, Some(vec![4, 8]));
        }
        Err(e) => assert!(e.to_string().contains("--filters"), "{e}"),
    }
    // Negative numbers parse as values, and validation says what is wrong with them.
    let cfg = train_config(&["--lr", "-1"]);
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(e.contains("train.lr must be a positive number, got -1"), "{e}");
    let cfg = train_config(&["--beta", "-0.5"]);
    assert!(format!("{:#}", cfg.validate().unwrap_err()).contains("train.beta"));
    assert!(parse_from(["apunet", "train", "--transformer-levels", "x"]).is_err());
}

#[test]
fn help_shows_defaults_required_flags_and_an_example() {
    let mut cmd = cli::command();
    let top = cmd.render_help().to_string();
    let example = top.lines().skip_while(|l| !l.starts_with("Examples")).skip(1).take(3).collect::<Vec<_>>();
    assert_eq!(example.len(), 3, "{top}");
    assert!(example[0].trim_start().starts_with("apunet demo"), "{top}");
    let sub = |name: &str| cli::command().find_subcommand_mut(name).unwrap().render_help().to_string();
    let train = sub("train");
    for want in [
        "[default: 20]",
        "[default: 8]",
        "[default: 0.0001]",
        "[default: 32,64,128,192]",
        "[default: group]",
        "[default: random]",
        "[default: loss]",
        "[default: 4]",
        "[default: cpu]",
    ] {
        assert!(train.contains(want), "train help lacks {want}:\n{train}");
    }
    assert!(train.contains("--norm") && train.contains("--transformer-levels") && train.contains("--kl-warmup-epochs"));
    assert!(sub("synth").contains("[required]"), "required flags are marked");
    assert!(sub("sample").contains("[default: 16]"));
    // Every flag that takes a value and has a default says so (train's fall back to the config).
    for c in cli::command().get_subcommands() {
        for a in c.get_arguments() {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            if !a.get_default_values().is_empty() {
                continue; // clap prints these itself
            }
            if c.get_name() == "train" && a.get_action().takes_values() {
                let optional =
                    ["data", "out", "config", "resume", "extra", "grad_clip_norm", "weight_decay", "patch", "transformer_levels"];
                assert!(
                    help.contains("[default:") || optional.contains(&a.get_id().as_str()) || help.contains("required"),
                    "train --{}: {help}",
                    a.get_id()
                );
            }
        }
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_apunet")
}

#[test]
fn a_closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.npz");
    let status = Command::new(bin()).args(["synth", "--out", data.to_str().unwrap(), "--count", "40", "--size", "16"]).status().unwrap();
    assert!(status.success());
    // Score the annotators against themselves: many lines of output into a pipe closed at once.
    let ds = apunet::data::Dataset::load(&data).unwrap();
    let samples = dir.path().join("s.npz");
    let m = ds.masks.clone().into_dyn();
    apunet::data::npz::write_npz(&samples, &[("samples", apunet::data::npz::NpzEntry::U8(&m))]).unwrap();
    let out = dir.path().join("scores");
    let mut child = Command::new(bin())
        .args(["metrics", "--samples", samples.to_str().unwrap(), "--labels", data.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success(), "exit {status:?}: {err}");
    assert!(out.join("metrics.json").exists(), "the command still finishes its work");
}

#[test]
fn a_zero_batch_size_is_refused_for_sampling() {
    let e = format!(
        "{:#}",
        apunet::jobs::sample::RunSampling { batch_size: 0, ..apunet::jobs::sample::RunSampling::for_run(std::path::Path::new("r")) }
            .load()
            .unwrap_err()
    );
    assert!(e.contains("--batch-size must be at least 1"), "{e}");
}
