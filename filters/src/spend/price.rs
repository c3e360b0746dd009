//! Prices (`price = { input_per_mtok, output_per_mtok, cached_input_per_mtok }` on
//! `[[models]]`) and the cost of a request, in integer micro-dollars.

use serde::Deserialize;

use crate::{ConfigError, Usage};

/// A model's list price as configured: US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
pub struct PriceSpec {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Accepted and validated; see [`Price::cached_input`].
    pub cached_input_per_mtok: Option<f64>,
}

/// The most a price may say (USD per million tokens): far above any list price, low enough
/// that no product of it with a token count overflows.
const MAX_USD_PER_MTOK: f64 = 1_000_000.0;

impl PriceSpec {
    /// Checks every field (finite, not negative, at most 1 000 000), naming `path` in errors.
    pub fn validate(&self, path: &str, errs: &mut Vec<ConfigError>) {
        let fields = [
            ("input_per_mtok", Some(self.input_per_mtok)),
            ("output_per_mtok", Some(self.output_per_mtok)),
            ("cached_input_per_mtok", self.cached_input_per_mtok),
        ];
        for (name, v) in fields {
            if let Some(v) = v {
                if !v.is_finite() || !(0.0..=MAX_USD_PER_MTOK).contains(&v) {
                    errs.push(ConfigError::new(
                        format!("{path}.{name}"),
                        "must be a number of US dollars per million tokens, from 0 to 1000000",
                    ));
                }
            }
        }
    }

    /// The runtime price (call after [`PriceSpec::validate`]).
    pub fn price(&self) -> Price {
        Price {
            input: micros(self.input_per_mtok),
            output: micros(self.output_per_mtok),
            cached_input: self.cached_input_per_mtok.map(micros),
        }
    }
}

/// US dollars to whole micro-dollars (rounded; negative and non-finite values are 0).
pub fn micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round() as u64
    } else {
        0
    }
}

/// A price in micro-dollars per million tokens (= pico-dollars per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    /// The price of cached prompt tokens; without it they cost `input`.
    pub cached_input: Option<u64>,
}

impl Price {
    /// The cost of `prompt` input and `completion` output tokens, in micro-dollars, rounded up
    /// (a request never costs less than its share).
    pub fn cost(&self, prompt: u64, completion: u64) -> u64 {
        let pico = u128::from(prompt) * u128::from(self.input)
            + u128::from(completion) * u128::from(self.output);
        u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }

    /// The cost of a reported usage.
    pub fn cost_of(&self, usage: &Usage) -> u64 {
        let Some(cached_price) = self.cached_input else {
            return self.cost(usage.prompt_tokens, usage.completion_tokens);
        };
        let cached = usage.cached_prompt_tokens.min(usage.prompt_tokens);
        let pico = u128::from(usage.prompt_tokens - cached) * u128::from(self.input)
            + u128::from(cached) * u128::from(cached_price)
            + u128::from(usage.completion_tokens) * u128::from(self.output);
        u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// The cost of one request, set by the engine in [`crate::Cx::extensions`] before the chain's
/// `on_log` (so the audit record, the budgets and the metrics all see the same number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Micro-dollars; 0 for an unpriced model.
    pub micros: u64,
    /// Whether the model has a price.
    pub priced: bool,
}

impl Cost {
    /// `x-sluice-cost-usd`: the cost in dollars, as the response header carries it (SPEC §15).
    pub fn header(&self) -> (http::HeaderName, http::HeaderValue) {
        let usd = usd_string(i64::try_from(self.micros).unwrap_or(i64::MAX));
        // Digits and a point: always a valid header value.
        let value = http::HeaderValue::from_str(&usd)
            .unwrap_or_else(|_| http::HeaderValue::from_static("0.000000"));
        (http::HeaderName::from_static("x-sluice-cost-usd"), value)
    }
}

/// Micro-dollars as a decimal string of dollars (`1234567` → `1.234567`).
pub fn usd_string(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// Micro-dollars as a JSON number of dollars.
pub fn usd_f64(micros: i64) -> f64 {
    micros as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_usage_times_price_rounded_up() {
        // gpt-4o: $2.50 / $10.00 per Mtok.
        let p = PriceSpec {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: Some(1.25),
        }
        .price();
        assert_eq!(p.input, 2_500_000);
        assert_eq!(p.cost(1_000_000, 0), 2_500_000);
        assert_eq!(p.cost(1000, 500), 2_500 + 5_000);
        // 1 token at $2.50/Mtok is 2.5 µ$: rounded up.
        assert_eq!(p.cost(1, 0), 3);
        assert_eq!(p.cost(0, 0), 0);
        assert_eq!(Price::default().cost(u64::MAX, u64::MAX), 0);
        let huge = PriceSpec {
            input_per_mtok: MAX_USD_PER_MTOK,
            output_per_mtok: MAX_USD_PER_MTOK,
            cached_input_per_mtok: None,
        }
        .price();
        assert_eq!(huge.cost(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn cached_prompt_tokens_cost_the_cached_price() {
        let spec = |cached| PriceSpec {
            input_per_mtok: 2.5,
            output_per_mtok: 10.0,
            cached_input_per_mtok: cached,
        };
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1000,
            cached_prompt_tokens: 600_000,
        };
        // 400k at $2.50 + 600k at $1.25 + 1k at $10.
        assert_eq!(
            spec(Some(1.25)).price().cost_of(&u),
            1_000_000 + 750_000 + 10_000
        );
        // Without a cached price every prompt token costs `input`.
        assert_eq!(spec(None).price().cost_of(&u), 2_500_000 + 10_000);
        // A cached count above the prompt is clamped to it.
        let odd = Usage {
            cached_prompt_tokens: 5_000_000,
            ..u
        };
        assert_eq!(spec(Some(0.0)).price().cost_of(&odd), 10_000);
    }

    #[test]
    fn usd_strings() {
        assert_eq!(usd_string(0), "0.000000");
        assert_eq!(usd_string(1_234_567), "1.234567");
        assert_eq!(usd_string(-5), "-0.000005");
    }

    #[test]
    fn bad_prices_name_their_field() {
        let p = PriceSpec {
            input_per_mtok: -1.0,
            output_per_mtok: f64::NAN,
            cached_input_per_mtok: Some(2e6),
        };
        let mut errs = Vec::new();
        p.validate("models[1].price", &mut errs);
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "models[1].price.input_per_mtok",
                "models[1].price.output_per_mtok",
                "models[1].price.cached_input_per_mtok"
            ]
        );
    }
}

/// A flat price for one call that has no tokens (an MCP `tools/call` of a server with
/// `price_per_call_usd`), put in the request's extensions before the chain runs: the budgets
/// reserve it and, when the call is answered, charge it; `label` stands for the model in the
/// usage rows (`mcp:{server}`).
#[derive(Debug, Clone)]
pub struct CallPrice {
    pub micros: i64,
    pub label: std::sync::Arc<str>,
}
