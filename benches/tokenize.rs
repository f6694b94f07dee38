//! Tokenization throughput of the dataset cache build, against the Python `tokenizers` library's
//! `encode_batch` on the same file and machine.
//!
//!     cargo bench -p shard-data --bench tokenize [-- --mb 100]
//!
//! Makes (once, under target/bench-data/) a JSONL file of `{"text": ...}` lines of about the asked
//! size, English-like text drawn from the Mistral tokenizer test cases; builds the cache for it
//! with the Mistral-7B tokenizer (timing the whole build: hashing, JSON, tokenization, writing);
//! times a second `prepare_cache` (the cache reused); then runs benches/tokenize_hf.py.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use shard_data::{DataSpec, Format, OnBadExample, prepare_cache};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: u64 = args.iter().position(|a| a == "--mb").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(100);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let tokenizer = root.join("tests/fixtures/tokenizer/mistral-7b-v0.1.tokenizer.json");
    let work = root.join("target/bench-data");
    let source = work.join(format!("text-{mb}mb.jsonl"));
    if !source.is_file() {
        make_corpus(&root.join("tests/fixtures/tokenizer/mistral-7b-v0.1.cases.jsonl"), &source, mb << 20);
    }
    let spec = DataSpec {
        source: source.clone(),
        format: Format::Text,
        fields: Default::default(),
        tokenizer: Some(tokenizer.clone()),
        chat_template: None,
        seq_len: 1 << 20,
        packing: false,
        on_bad_example: OnBadExample::Error,
        vocab_size: 32000,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
    };
    let cache = work.join("cache");
    let _ = std::fs::remove_dir_all(&cache);
    let bytes = std::fs::metadata(&source).unwrap().len();
    let threads = rayon::current_num_threads();

    let start = Instant::now();
    let stats = prepare_cache(&spec, &cache, &std::sync::atomic::AtomicBool::new(false)).unwrap().stats;
    let build = start.elapsed().as_secs_f64();
    let start = Instant::now();
    assert!(!prepare_cache(&spec, &cache, &std::sync::atomic::AtomicBool::new(false)).unwrap().built);
    let reuse = start.elapsed().as_secs_f64();
    // BOS and EOS frame each example; the comparison counts the text's own tokens.
    let text_tokens = stats.tokens - 2 * stats.examples;
    println!("file: {} ({:.1} MB, {} examples), {threads} threads", source.display(), bytes as f64 / 1e6, stats.examples);
    println!(
        "shard-data cache build:        {text_tokens} tokens in {build:.2} s = {:.2} M tokens/s ({:.1} MB/s), everything included",
        text_tokens as f64 / build / 1e6,
        bytes as f64 / build / 1e6
    );
    println!("shard-data cache reuse:        {:.1} ms", reuse * 1e3);

    let out = Command::new("python3").arg(root.join("benches/tokenize_hf.py")).arg(&source).arg(&tokenizer).output();
    match out {
        Ok(out) if out.status.success() => {
            let hf: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let tokens = hf["tokens"].as_u64().unwrap();
            let encode = hf["encode_seconds"].as_f64().unwrap();
            let read = hf["read_seconds"].as_f64().unwrap();
            assert_eq!(tokens, text_tokens, "both tokenizers must give the same tokens");
            println!(
                "python tokenizers {} encode_batch: {tokens} tokens in {encode:.2} s = {:.2} M tokens/s ({} threads; + {read:.2} s to read the JSON)",
                hf["version"].as_str().unwrap_or("?"),
                tokens as f64 / encode / 1e6,
                hf["threads"]
            );
            println!("ratio (ours, whole build / python, encode_batch alone): {:.2}x", encode / build);
        }
        Ok(out) => println!("python3 benches/tokenize_hf.py failed:\n{}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => println!("python3 not found ({e}): no comparison"),
    }
}

/// About `size` bytes of `{"text": ...}` lines, 200 to 4000 characters each, of words drawn from
/// the `text` of the tokenizer cases (license text, code, unicode), seeded.
fn make_corpus(cases: &Path, out: &Path, size: u64) {
    let cases = std::fs::read_to_string(cases).unwrap();
    let words: Vec<String> = cases
        .lines()
        .flat_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["text"].as_str().unwrap().split(' ').map(str::to_owned).collect::<Vec<_>>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut written = 0u64;
    while written < size {
        let len = rng.random_range(200..4000);
        let mut text = String::with_capacity(len + 20);
        while text.len() < len {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(words.choose(&mut rng).unwrap());
        }
        let line = serde_json::json!({ "text": text }).to_string();
        writeln!(file, "{line}").unwrap();
        written += line.len() as u64 + 1;
    }
    file.flush().unwrap();
}
