//! Structured output: a JSON schema (or a Lark grammar) compiled by llguidance into a
//! matcher that masks the logits, so the reply always parses and validates.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use llmos_tokenizer::{TokenType, Tokenizer};
use std::sync::Arc;

/// The tokenizer as llguidance sees it: each token's bytes, special tokens marked.
struct Env {
    trie: TokTrie,
    tok: Arc<Tokenizer>,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tok.encode(&String::from_utf8_lossy(s), false, false)
    }
}

/// Compiles grammars for one vocabulary (building its token trie once).
pub struct Grammars {
    factory: ParserFactory,
    n_vocab: usize,
}

impl Grammars {
    /// `n_vocab` is the model's (it may exceed the tokenizer's; the extra ids never match).
    pub fn new(tok: Arc<Tokenizer>, n_vocab: usize) -> Result<Grammars, String> {
        let words: Vec<Vec<u8>> = (0..n_vocab as u32)
            .map(|id| match tok.token_type(id) {
                None => Vec::new(),
                Some(TokenType::Control | TokenType::UserDefined) => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend(tok.token_bytes(id, true));
                    w
                }
                Some(TokenType::Unknown | TokenType::Unused) => Vec::new(),
                Some(_) => tok.token_bytes(id, false),
            })
            .collect();
        let end = tok
            .eot
            .or(tok.eos)
            .ok_or("the model has no end-of-turn token: structured output needs one")?;
        let mut info = TokRxInfo::new(n_vocab as u32, end);
        info.tok_bos = tok.bos;
        let trie = TokTrie::from(&info, &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(Env { trie, tok });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Grammars { factory, n_vocab })
    }

    /// A constraint for replies that match `schema` (a JSON schema).
    pub fn json_schema(&self, schema: serde_json::Value) -> Result<Guided, String> {
        self.build(TopLevelGrammar::from_json_schema(schema))
    }

    /// A constraint from a Lark grammar (llguidance's dialect; `%json {...}` embeds a schema).
    pub fn lark(&self, grammar: &str) -> Result<Guided, String> {
        self.build(TopLevelGrammar::from_lark(grammar.to_string()))
    }

    fn build(&self, g: TopLevelGrammar) -> Result<Guided, String> {
        let parser = self
            .factory
            .create_parser(g)
            .map_err(|e| format!("invalid schema or grammar: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(format!("invalid schema or grammar: {e}"));
        }
        Ok(Guided {
            matcher,
            n_vocab: self.n_vocab,
        })
    }
}

/// One request's grammar state.
pub struct Guided {
    matcher: Matcher,
    n_vocab: usize,
}

impl llmos_engine::Constraint for Guided {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let m = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("grammar: {e}"))?;
        for (id, l) in logits.iter_mut().enumerate().take(self.n_vocab) {
            if !m.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn accept(&mut self, id: u32) -> Result<(), String> {
        if self.matcher.is_stopped() {
            return Ok(());
        }
        self.matcher
            .consume_token(id)
            .map_err(|e| format!("grammar: {e}"))
    }

    fn done(&self) -> bool {
        self.matcher.is_stopped()
    }
}
