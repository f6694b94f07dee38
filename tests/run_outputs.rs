//! What a run shows and leaves besides its weights: the eval loss (against the fixture's
//! reference forward), epochs, the loss chart, TensorBoard's event file, run.toml, and exports
//! whose config.json and adapter_config.json load right.

mod common;

use std::path::Path;

use common::{Mode, fixture_config, tiny, train, train_with_output};
use shard_checkpoint::HfCheckpoint;

/// `batch0.loss` of the fixture: transformers' forward loss on examples 0..4, before training.
fn reference_forward_loss() -> f64 {
    let reference = HfCheckpoint::open_file(&tiny().join("reference.safetensors")).unwrap();
    reference.read_f32("batch0.loss").unwrap()[0] as f64
}

/// The first `n` rows of the fixture's data, as a file of their own.
fn first_rows(dir: &Path, n: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(tiny().join("data.jsonl")).unwrap();
    let path = dir.join("eval.jsonl");
    std::fs::write(&path, text.lines().take(n).collect::<Vec<_>>().join("\n")).unwrap();
    path
}

fn stdout(run: &common::Run) -> String {
    String::from_utf8_lossy(&run.output.stdout).into_owned()
}

/// With lr 0 the model stays the fixture's, so the eval loss of every evaluation is the reference's
/// forward loss on the same examples. Three ranks for four examples: the second round gives two
/// ranks no example, and they must still take part in the gathers.
#[test]
fn eval_loss_is_the_reference_forward_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = first_rows(tmp.path(), 4);
    let cfg = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 24\n[train]\nsteps = 2\nmicro_batch_size = 1\nlr = 0.0\n\
         [eval]\npath = {eval:?}\nevery = 1\n",
        tiny(),
        tiny().join("data.jsonl")
    );
    let run = train(3, &cfg, "none", &[]);
    run.assert_success();
    let evals: Vec<f64> = run.metrics().iter().filter_map(|m| m["eval_loss"].as_f64()).collect();
    assert_eq!(evals.len(), 2, "every step evaluates");
    for loss in evals {
        assert!((loss - reference_forward_loss()).abs() < 1e-5, "eval loss {loss} vs reference {}", reference_forward_loss());
    }
    assert!(stdout(&run).contains("step 2: eval loss 7.0163"), "{}", stdout(&run));
}

/// `eval.fraction` holds rows out of training, and `train.epochs` counts steps over the rest:
/// 12 rows, 3 held out, 9 trained on twice in steps of 4 is 5 steps.
#[test]
fn epochs_over_the_rows_left_after_eval_fraction() {
    let cfg = format!(
        "[model]\npath = {:?}\n[data]\npath = {:?}\nseq_len = 24\n[train]\nepochs = 2\nmicro_batch_size = 2\nlr = 1e-3\n\
         [eval]\nfraction = 0.25\n",
        tiny(),
        tiny().join("data.jsonl")
    );
    let run = train(2, &cfg, "none", &[]);
    run.assert_success();
    let out = stdout(&run);
    assert!(out.contains("5 steps (2 epochs) of 4 examples") && out.contains("from 9 examples"), "{out}");
    assert!(out.contains("eval: 3 examples, at the end"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("step 5/5  loss ") && l.contains("  elapsed ") && l.contains("  eta 0:00")),
        "a line per step: {out}"
    );
    let metrics = run.metrics();
    assert_eq!(metrics.len(), 5);
    assert!(metrics[..4].iter().all(|m| m.get("eval_loss").is_none()), "only the end evaluates");
    assert!(metrics[4]["eval_loss"].as_f64().unwrap().is_finite());
}

/// The data series of a chart: its polylines 2 px wide, in drawing order, without the legend's
/// swatches (level strokes 20 px long), each as its (x, y) pixels.
fn chart_series(doc: &roxmltree::Document) -> Vec<Vec<(f64, f64)>> {
    let lines = doc.descendants().filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2"));
    let points = lines.map(|n| {
        let pairs = n.attribute("points").unwrap().split_whitespace();
        pairs.map(|p| p.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap())).unwrap()).collect::<Vec<(f64, f64)>>()
    });
    points.filter(|p| !(p.len() == 2 && p[0].1 == p[1].1 && p[1].0 - p[0].0 == 20.0)).collect()
}

/// The largest distance, in pixels, of `(value, pixel)` pairs from the least-squares line
/// through them: a linear axis puts every value within a pixel's rounding of its place.
fn off_the_axis(pairs: &[(f64, f64)]) -> f64 {
    let n = pairs.len() as f64;
    let (mean_v, mean_p) = (pairs.iter().map(|p| p.0).sum::<f64>() / n, pairs.iter().map(|p| p.1).sum::<f64>() / n);
    let slope =
        pairs.iter().map(|(v, p)| (v - mean_v) * (p - mean_p)).sum::<f64>() / pairs.iter().map(|(v, _)| (v - mean_v).powi(2)).sum::<f64>();
    pairs.iter().map(|(v, p)| (mean_p + slope * (v - mean_v) - p).abs()).fold(0.0, f64::max)
}

/// loss.svg draws metrics.jsonl: a train-loss point per step, an eval point per evaluated step
/// (on the same axes) and an lr point per step, each at its step and value on linear axes.
fn assert_chart_plots_the_metrics(doc: &roxmltree::Document, metrics: &[serde_json::Value]) {
    let series = chart_series(doc);
    assert_eq!(series.len(), 3, "train loss, eval loss and lr: {series:?}");
    let at = |key: &str| -> Vec<(f64, f64)> {
        metrics.iter().filter_map(|m| Some((m["step"].as_f64().unwrap(), m.get(key)?.as_f64()?))).collect()
    };
    let (train, eval, lr) = (at("loss"), at("eval_loss"), at("lr"));
    assert!(!eval.is_empty(), "the run evaluates");
    let mut loss_axes = Vec::new();
    for ((name, values), drawn) in [("train loss", &train), ("eval loss", &eval), ("lr", &lr)].into_iter().zip(&series) {
        assert_eq!(drawn.len(), values.len(), "{name}: a point per metrics.jsonl line that has it");
        let pairs: Vec<_> = values.iter().zip(drawn).map(|(&(step, value), &(x, y))| ((step, x), (value, y))).collect();
        if name == "lr" {
            let (steps, values): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            assert!(off_the_axis(&steps) <= 1.0 && off_the_axis(&values) <= 1.0, "lr: {drawn:?} against {values:?}");
        } else {
            loss_axes.extend(pairs);
        }
    }
    let (steps, losses): (Vec<_>, Vec<_>) = loss_axes.into_iter().unzip();
    assert!(off_the_axis(&steps) <= 1.0, "train and eval points at their steps: {steps:?}");
    assert!(off_the_axis(&losses) <= 1.0, "train and eval points at their losses: {losses:?}");
}

/// loss.svg (drawn at each save and at the end), `shard-train plot` over two runs, TensorBoard's
/// records (checksums, steps, tags and values as in metrics.jsonl) and run.toml, which loads as
/// the run config it records.
#[test]
fn chart_tensorboard_and_run_record() {
    let tmp = tempfile::tempdir().unwrap();
    let eval = first_rows(tmp.path(), 4);
    let cfg = format!(
        "{}[eval]\npath = {eval:?}\nevery = 2\n",
        fixture_config(&tiny(), Mode::Full, 1, 4, 1).replace("[train]\n", "[train]\nlr_schedule = \"linear\"\n")
    );
    let output = "export = \"none\"\nsave_every = 2\ntensorboard = true";
    let run = train_with_output(1, &cfg, output, &[]);
    run.assert_success();
    let metrics = run.tiny_metrics();

    let svg = std::fs::read_to_string(run.out_dir.join("loss.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("loss.svg is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(doc.descendants().filter(|n| n.has_tag_name("polyline")).count() >= 3, "train, eval and lr curves");
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
    assert!(["loss", "learning rate", "step", "train", "eval"].iter().all(|t| texts.contains(t)), "titles, axes and legend: {texts:?}");
    assert_chart_plots_the_metrics(&doc, &metrics);

    let second = train(1, &cfg.replace("lr_schedule = \"linear\"", "lr_schedule = \"cosine\""), "none", &[]);
    second.assert_success();
    let both = tempfile::tempdir().unwrap();
    let both = both.path().join("both.svg");
    let plot = std::process::Command::new(env!("CARGO_BIN_EXE_shard-train"))
        .args(["plot", run.out_dir.to_str().unwrap(), second.out_dir.to_str().unwrap(), "--out", both.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(plot.status.success(), "{}", String::from_utf8_lossy(&plot.stderr));
    roxmltree::Document::parse(&std::fs::read_to_string(&both).unwrap()).expect("the comparison is XML");
    let plot_with = |args: &[&str]| {
        let runs = [run.out_dir.to_str().unwrap(), second.out_dir.to_str().unwrap()];
        std::process::Command::new(env!("CARGO_BIN_EXE_shard-train")).arg("plot").args(runs).args(args).output().unwrap()
    };
    let by_tokens = plot_with(&["--out", both.to_str().unwrap(), "--x", "tokens", "--log-y"]);
    assert!(by_tokens.status.success(), "{}", String::from_utf8_lossy(&by_tokens.stderr));
    let by_tokens = std::fs::read_to_string(&both).unwrap();
    let doc = roxmltree::Document::parse(&by_tokens).unwrap();
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
    assert!(texts.contains(&"tokens") && texts.iter().any(|t| t.starts_with("loss: ") && t.contains(" vs ")), "{texts:?}");
    let png = both.with_extension("png");
    let refused = plot_with(&["--out", png.to_str().unwrap()]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("SVG only"));
    assert!(!png.exists(), "no SVG written under a .png name");

    let tb_dir = run.out_dir.join("tb");
    let files: Vec<_> = std::fs::read_dir(&tb_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert!(files[0].file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."));
    let events = tfevents::read(&std::fs::read(&files[0]).unwrap());
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    let steps = &events[1..];
    assert_eq!(steps.len(), metrics.len());
    for (event, m) in steps.iter().zip(&metrics) {
        assert_eq!(event.step, m["step"].as_u64().unwrap());
        let value = |tag: &str| event.scalars.iter().find(|(t, _)| t == tag).map(|(_, v)| *v as f64);
        assert!((value("train/loss").unwrap() - m["loss"].as_f64().unwrap()).abs() < 1e-5);
        assert!((value("train/lr").unwrap() - m["lr"].as_f64().unwrap()).abs() < 1e-9);
        assert!((value("train/grad_norm").unwrap() - m["grad_norm"].as_f64().unwrap()).abs() < 1e-4);
        assert!(value("train/tokens_per_s").unwrap() > 0.0 && value("memory/peak_engine_mib").unwrap() > 0.0);
        assert!((value("train/exposed_comm_s").unwrap() - m["exposed_comm_s"].as_f64().unwrap()).abs() < 1e-4);
        match m["eval_loss"].as_f64() {
            Some(eval) => assert!((value("eval/loss").unwrap() - eval).abs() < 1e-5),
            None => assert!(value("eval/loss").is_none()),
        }
    }

    let record = std::fs::read_to_string(run.out_dir.join("run.toml")).unwrap();
    assert!(record.starts_with(&format!("# shard-train {}", env!("CARGO_PKG_VERSION"))), "{record}");
    assert!(record.contains("# command: ") && record.contains(" train --config "), "{record}");
    let resolved = shard_train_core::config::run_config::RunConfig::load(&run.out_dir.join("run.toml")).expect("run.toml is a run config");
    assert_eq!(resolved.output.dir, run.out_dir);
    assert_eq!(resolved.model.path.as_deref(), Some(tiny().as_path()));
    assert_eq!(resolved.eval.unwrap().every, 2);
}

/// config.json names the dtype of the exported tensors, and adapter_config.json names its base
/// by an absolute path even when the run config named it relatively.
#[test]
fn exports_name_their_dtype_and_an_absolute_base() {
    // A copy of the fixture, named from the run config by a relative path (`train` writes the
    // config into a temporary directory beside this one).
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(file), model.join(file)).unwrap();
    }
    let relative = Path::new("..").join(tmp.path().file_name().unwrap()).join("model");
    let cfg = fixture_config(&tiny(), Mode::Lora, 1, 4, 1).replacen(&format!("path = {:?}", tiny()), &format!("path = {relative:?}"), 1);
    let run = train(1, &cfg, "peft", &[]);
    run.assert_success();
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.out_dir.join("final/adapter_config.json")).unwrap()).unwrap();
    let base = Path::new(adapter["base_model_name_or_path"].as_str().unwrap());
    assert!(base.is_absolute() && !base.to_string_lossy().contains(".."), "{}", base.display());
    assert_eq!(base.canonicalize().unwrap(), model.canonicalize().unwrap());

    for (dtype, torch_name, disk) in [("bf16", "bfloat16", "BF16"), ("f32", "float32", "F32")] {
        let out = tmp.path().join(format!("export-{dtype}"));
        let export = std::process::Command::new(env!("CARGO_BIN_EXE_shard-train"))
            .args(["export", "--checkpoint", run.out_dir.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", dtype])
            .output()
            .unwrap();
        assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
        let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["dtype"], torch_name, "{dtype}");
        let header = safetensors_dtypes(&out.join("model.safetensors"));
        assert!(header.iter().all(|d| d == disk), "{dtype}: {header:?}");
    }
}

/// The dtype of every tensor in a safetensors file, from its header.
fn safetensors_dtypes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header.as_object().unwrap().iter().filter(|(k, _)| *k != "__metadata__").map(|(_, v)| v["dtype"].as_str().unwrap().to_owned()).collect()
}

/// A reader of TensorBoard event files written from the format (not from our writer): TFRecords
/// with masked CRC-32C checksums around protobuf `Event`s.
mod tfevents {
    pub struct Event {
        pub step: u64,
        pub file_version: Option<String>,
        pub scalars: Vec<(String, f32)>,
    }

    pub fn read(mut bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        while !bytes.is_empty() {
            let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), masked_crc(&bytes[..8]), "length checksum");
            let data = &bytes[12..12 + len];
            assert_eq!(u32::from_le_bytes(bytes[12 + len..16 + len].try_into().unwrap()), masked_crc(data), "data checksum");
            events.push(event(data));
            bytes = &bytes[16 + len..];
        }
        events
    }

    fn event(data: &[u8]) -> Event {
        let mut event = Event { step: 0, file_version: None, scalars: Vec::new() };
        for (field, value) in fields(data) {
            match (field, value) {
                (2, Value::Varint(step)) => event.step = step,
                (3, Value::Bytes(v)) => event.file_version = Some(String::from_utf8(v.to_vec()).unwrap()),
                (5, Value::Bytes(summary)) => {
                    for (_, value) in fields(summary) {
                        let Value::Bytes(value) = value else { panic!("Summary.value is a message") };
                        let (mut tag, mut simple) = (String::new(), f32::NAN);
                        for (f, v) in fields(value) {
                            match (f, v) {
                                (1, Value::Bytes(t)) => tag = String::from_utf8(t.to_vec()).unwrap(),
                                (2, Value::Fixed32(x)) => simple = f32::from_le_bytes(x),
                                _ => {}
                            }
                        }
                        event.scalars.push((tag, simple));
                    }
                }
                _ => {}
            }
        }
        event
    }

    enum Value<'a> {
        Varint(u64),
        Fixed64,
        Fixed32([u8; 4]),
        Bytes(&'a [u8]),
    }

    fn fields(mut data: &[u8]) -> Vec<(u64, Value<'_>)> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let key = varint(&mut data);
            let value = match key & 7 {
                0 => Value::Varint(varint(&mut data)),
                1 => {
                    data = &data[8..];
                    Value::Fixed64
                }
                2 => {
                    let len = varint(&mut data) as usize;
                    let (v, rest) = data.split_at(len);
                    data = rest;
                    Value::Bytes(v)
                }
                5 => {
                    let v = data[..4].try_into().unwrap();
                    data = &data[4..];
                    Value::Fixed32(v)
                }
                wire => panic!("wire type {wire}"),
            };
            out.push((key >> 3, value));
        }
        out
    }

    fn varint(data: &mut &[u8]) -> u64 {
        let mut x = 0;
        for shift in (0..64).step_by(7) {
            let byte = data[0];
            *data = &data[1..];
            x |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                break;
            }
        }
        x
    }

    /// CRC-32C with a table (another way than the writer's), masked as TFRecord masks it.
    fn masked_crc(data: &[u8]) -> u32 {
        let table: Vec<u32> = (0..256u32)
            .map(|mut c| {
                for _ in 0..8 {
                    c = if c & 1 != 0 { 0x82f6_3b78 ^ (c >> 1) } else { c >> 1 };
                }
                c
            })
            .collect();
        let crc = !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8));
        crc.rotate_right(15).wrapping_add(0xa282_ead8)
    }
}
