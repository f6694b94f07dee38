//! `shard-train generate`: continuations of prompts by a model, a fine-tune's export or a save,
//! in one process on the CPU (burn-flex), streamed to stdout as they are produced, or one JSON
//! object per prompt. Prompts run one after the other, each with its own KV cache.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::Flex;
use shard_data::{Prompts, TemplateSource, TextTokenizer};
use shard_model::{GenerateOptions, SampleOptions, Sampling, generate};
use shard_train_core::generate_model::{GenerationModel, ModelSource, load};

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["model", "checkpoint"]))]
pub struct GenerateArgs {
    /// A model directory: a Hugging Face checkpoint or an export (f32, bf16, f16 or NF4).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A training save (`.../checkpoints/step-NNNNNNN`), or a run's output.dir or checkpoints
    /// directory (its latest complete save).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// peft LoRA adapters (adapter_config.json, adapter_model.safetensors) on top of the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The tokenizer.json; default: the model directory's (a save's: its base model's).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// A prompt (repeatable), tokenized with BOS in front as training does.
    #[arg(long)]
    prompt: Vec<String>,
    /// Prompts in a JSONL file, one per line in a training format: a conversation
    /// (`{"messages": [...]}`, or ShareGPT's `{"conversations": [...]}`) up to its last user turn,
    /// `{"prompt": ...}`, or `{"text": ...}`.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Put each --prompt as a user's turn of a conversation, rendered with the chat template
    /// (with its generation prompt), else in the chat format ([INST] ... [/INST]).
    #[arg(long)]
    chat: bool,
    /// The jinja chat template of --chat and of conversations in --prompts; default: the one
    /// beside the tokenizer (chat_template.jinja, or tokenizer_config.json's `chat_template`, as an
    /// export of a chat-trained run carries it).
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// A prompt as token ids, e.g. 1,415,5565 (repeatable): for a model without a tokenizer.
    #[arg(long, value_parser = parse_ids)]
    prompt_ids: Vec<TokenIds>,
    /// Tokens to generate at most per prompt (fewer when EOS comes first).
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sample with this temperature instead of choosing the most likely token (greedy).
    #[arg(long)]
    temperature: Option<f32>,
    /// Sample from the most likely tokens whose probabilities sum to this (0 < p <= 1).
    #[arg(long)]
    top_p: Option<f32>,
    /// Sample from the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// The seed of sampling: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print one JSON object per prompt: {"prompt_ids": [...], "generated_ids": [...], "text": "..."}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let sampling = sampling(&args)?;
    let source = match (&args.model, &args.checkpoint) {
        (Some(dir), _) => ModelSource::Dir(dir),
        (_, Some(save)) => ModelSource::Save(save),
        (None, None) => unreachable!("clap requires one"),
    };
    let loaded: GenerationModel<Flex> = load(source, args.adapter.as_deref(), &Default::default())?;
    let tokenizer_file = tokenizer_file(&args, loaded.model_dir.as_deref());
    let tokenizer = tokenizer_file.as_deref().map(TextTokenizer::from_file).transpose()?;
    // Only conversations need the template (a model's may not compile here: plain prompts still run).
    let conversations = args.chat || args.prompts.is_some();
    let template = if conversations { TemplateSource::find(args.chat_template.as_deref(), tokenizer_file.as_deref())? } else { None };
    let prompts = prompt_ids(&args, &loaded, tokenizer.as_ref(), template.as_ref())?;
    if prompts.is_empty() {
        bail!("nothing to generate from: give --prompt TEXT, --prompts FILE.jsonl or --prompt-ids 1,2,3");
    }
    let options = GenerateOptions { max_new_tokens: args.max_new_tokens, stop_ids: stop_ids(&loaded)?, sampling };

    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    let mut generated_count = 0;
    for (index, prompt) in prompts.iter().enumerate() {
        let mut shown = Shown::new(tokenizer.as_ref(), !args.json);
        if !args.json {
            shown.prompt(&mut out, prompt)?;
        }
        let mut write_error = None;
        let generated = generate(&loaded.model, prompt, &options, index as u64, |token| {
            if let Err(e) = shown.token(&mut out, token) {
                write_error.get_or_insert(e);
            }
        });
        if let Some(e) = write_error {
            return Err(e);
        }
        generated_count += generated.len();
        if args.json {
            let text = match &tokenizer {
                Some(tok) => tok.decode(&generated, true)?,
                None => String::new(),
            };
            let object = serde_json::json!({ "prompt_ids": prompt, "generated_ids": generated, "text": text });
            writeln!(out, "{object}")?;
        } else {
            writeln!(out, "\n")?;
        }
        out.flush()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "generated {generated_count} tokens for {} in {seconds:.2} s: {:.1} tokens/s",
        plural(prompts.len(), "prompt"),
        generated_count as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// One prompt's ids on the command line.
#[derive(Clone)]
struct TokenIds(Vec<u32>);

fn parse_ids(text: &str) -> Result<TokenIds, String> {
    let ids: Vec<u32> = text
        .split(',')
        .map(|id| id.trim().parse().map_err(|_| format!("{id:?} is not a token id: expected ids separated by commas, e.g. 1,415,5565")))
        .collect::<Result<_, _>>()?;
    Ok(TokenIds(ids))
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}

fn sampling(args: &GenerateArgs) -> Result<Sampling> {
    if args.temperature.is_none() && args.top_p.is_none() && args.top_k.is_none() {
        return Ok(Sampling::Greedy);
    }
    let temperature = args.temperature.unwrap_or(1.0);
    if temperature == 0.0 {
        return Ok(Sampling::Greedy);
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        bail!("--temperature {temperature}: expected a positive number (0 for greedy)");
    }
    let top_p = args.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        bail!("--top-p {top_p}: expected a number in (0, 1]");
    }
    Ok(Sampling::Sample(SampleOptions { temperature, top_k: args.top_k, top_p, seed: args.seed }))
}

/// --tokenizer, else the model directory's tokenizer.json when it has one.
fn tokenizer_file(args: &GenerateArgs, model_dir: Option<&Path>) -> Option<PathBuf> {
    match (&args.tokenizer, model_dir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) => Some(dir.join("tokenizer.json")).filter(|p| p.is_file()),
        (None, None) => None,
    }
}

fn prompt_ids(
    args: &GenerateArgs,
    loaded: &GenerationModel<Flex>,
    tokenizer: Option<&TextTokenizer>,
    template: Option<&TemplateSource>,
) -> Result<Vec<Vec<u32>>> {
    let cfg = &loaded.model.config;
    let mut prompts = Vec::new();
    for TokenIds(ids) in &args.prompt_ids {
        if let Some(bad) = ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            bail!("--prompt-ids: {bad} is outside the model's vocabulary (0..{})", cfg.vocab_size);
        }
        prompts.push(ids.clone());
    }
    if args.prompt.is_empty() && args.prompts.is_none() {
        return Ok(prompts);
    }
    let tokenizer = tokenizer.context(
        "--prompt and --prompts need a tokenizer: the model directory has no tokenizer.json; give --tokenizer FILE (or --prompt-ids)",
    )?;
    let framing = Prompts::new(tokenizer, cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, template)?;
    for text in &args.prompt {
        let ids = if args.chat { framing.chat(text) } else { framing.text(text) };
        prompts.push(ids.map_err(|why| anyhow::anyhow!("--prompt {text:?}: {why}"))?);
    }
    if let Some(file) = &args.prompts {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let ids = framing.line(line.as_bytes()).map_err(|why| anyhow::anyhow!("{} line {}: {why}", file.display(), number + 1))?;
            prompts.push(ids);
        }
    }
    Ok(prompts)
}

/// EOS: config.json's `eos_token_id`, and those of generation_config.json (a number or a list).
fn stop_ids(loaded: &GenerationModel<Flex>) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = loaded.model.config.eos_token_id.into_iter().collect();
    if let Some(path) = loaded.model_dir.as_ref().map(|d| d.join("generation_config.json")).filter(|p| p.is_file()) {
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        let listed = match &config["eos_token_id"] {
            serde_json::Value::Null => vec![],
            serde_json::Value::Array(list) => list.clone(),
            one => vec![one.clone()],
        };
        for id in listed {
            let id = id.as_u64().with_context(|| format!("{}: `eos_token_id` holds {id}, expected token ids", path.display()))?;
            ids.push(id as u32);
        }
    }
    Ok(ids)
}

/// What the terminal shows of one prompt: its text and then the continuation as it grows (the
/// decoded text so far minus what is already shown, as a token may complete a character only
/// with the next one), or the ids when there is no tokenizer.
struct Shown<'a> {
    tokenizer: Option<&'a TextTokenizer>,
    enabled: bool,
    ids: Vec<u32>,
    printed: usize,
}

impl<'a> Shown<'a> {
    fn new(tokenizer: Option<&'a TextTokenizer>, enabled: bool) -> Self {
        Self { tokenizer, enabled, ids: Vec::new(), printed: 0 }
    }

    fn prompt(&mut self, out: &mut impl Write, prompt: &[u32]) -> Result<()> {
        match self.tokenizer {
            Some(tok) => write!(out, "{}", tok.decode(prompt, true)?)?,
            None => write!(out, "{}", prompt.iter().map(u32::to_string).collect::<Vec<_>>().join(" "))?,
        }
        // A continuation that starts a word decodes without its leading space on its own.
        self.ids.extend(prompt.last());
        self.printed = self.tokenizer.map(|tok| tok.decode(&self.ids, true)).transpose()?.map_or(0, |t| t.len());
        Ok(out.flush()?)
    }

    fn token(&mut self, out: &mut impl Write, token: u32) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        self.ids.push(token);
        match self.tokenizer {
            Some(tok) => {
                let text = tok.decode(&self.ids, true)?;
                if text.len() > self.printed && text.is_char_boundary(self.printed) && !text.ends_with('\u{FFFD}') {
                    write!(out, "{}", &text[self.printed..])?;
                    self.printed = text.len();
                }
            }
            None => write!(out, " {token}")?,
        }
        Ok(out.flush()?)
    }
}
