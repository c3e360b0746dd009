//! The ordered filter chain of one config generation.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_filters::{
    ConfigError, ConfigErrors, Cx, Exchange, Filter, FilterFactory, JsonBody, Needs, Request,
    RequestHead, ResponseHead, Shared, StreamEvent, Verdict,
};

use crate::config::Config;

/// The filters of `[[filters]]`, in order, and what they need from the engine.
#[derive(Clone, Default)]
pub struct Chain {
    filters: Vec<Arc<dyn Filter>>,
    needs: Needs,
}

/// The filter types a gateway knows: the built-ins plus whatever an embedder registered.
#[derive(Clone)]
pub struct FilterTypes {
    factories: HashMap<String, Arc<dyn FilterFactory>>,
}

impl Default for FilterTypes {
    fn default() -> Self {
        let mut t = FilterTypes {
            factories: HashMap::new(),
        };
        for (name, build, section) in sluice_filters::builtins::FILTERS {
            match section {
                Some(s) => t.register(name, sluice_filters::WithSection::new(*s, *build)),
                None => t.register(name, *build),
            }
        }
        t
    }
}

impl FilterTypes {
    pub fn register(&mut self, name: &str, factory: impl FilterFactory) {
        self.factories.insert(name.to_string(), Arc::new(factory));
    }

    /// Whether a registered type owns section `[name]` ([`FilterFactory::section`]).
    pub fn claims(&self, section: &str) -> bool {
        self.factories
            .values()
            .any(|f| f.section() == Some(section))
    }

    fn names(&self) -> String {
        let mut n: Vec<&str> = self.factories.keys().map(String::as_str).collect();
        n.sort_unstable();
        n.join(", ")
    }
}

impl Chain {
    /// Builds every filter of the config; all errors are reported, each with its path.
    pub fn build(
        config: &Config,
        types: &FilterTypes,
        shared: &Shared,
    ) -> Result<Chain, Vec<ConfigError>> {
        let policy = config.policy();
        // A top-level table the config has no field for is some filter type's own section, or
        // a mistake: reported as the file's other unknown keys are.
        let mut errs: Vec<ConfigError> = config
            .filter_sections
            .keys()
            .filter(|name| !types.claims(name))
            .map(|name| ConfigError::new(name.as_str(), "unknown key"))
            .collect();
        let mut filters = Vec::new();
        for (i, spec) in config.filters.iter().enumerate() {
            let path = format!("filters[{i}]");
            let Some(toml::Value::String(kind)) = spec.get("type") else {
                continue;
            };
            let Some(factory) = types.factories.get(kind) else {
                errs.push(ConfigError::new(
                    format!("{path}.type"),
                    format!("unknown filter type `{kind}` (known: {})", types.names()),
                ));
                continue;
            };
            let mut options = spec.clone();
            options.remove("type");
            match factory.build(&policy, &options, &path, shared) {
                Ok(f) => filters.push(f),
                Err(ConfigErrors(e)) => errs.extend(e),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let needs = filters
            .iter()
            .fold(Needs::default(), |n, f| n.union(f.needs()));
        Ok(Chain { filters, needs })
    }

    pub fn needs(&self) -> Needs {
        self.needs
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    pub async fn on_request_head(&self, head: &RequestHead<'_>, cx: &mut Cx) -> Verdict {
        for f in &self.filters {
            if let Verdict::Respond(r) = f.on_request_head(head, cx).await {
                return Verdict::Respond(r);
            }
        }
        Verdict::Continue
    }

    pub async fn on_request(&self, req: &mut Request<'_>, cx: &mut Cx) -> Verdict {
        for f in &self.filters {
            if let Verdict::Respond(r) = f.on_request(req, cx).await {
                return Verdict::Respond(r);
            }
        }
        Verdict::Continue
    }

    pub fn on_response_head(&self, resp: &ResponseHead<'_>, cx: &mut Cx) {
        for f in self.filters.iter().rev() {
            f.on_response_head(resp, cx);
        }
    }

    pub fn on_response_body(&self, body: &mut JsonBody, cx: &mut Cx) {
        for f in self.filters.iter().rev() {
            if f.needs().response_body {
                f.on_response_body(body, cx);
            }
        }
    }

    pub fn on_stream_events(&self, events: &mut Vec<StreamEvent>, end: bool, cx: &mut Cx) {
        for f in self.filters.iter().rev() {
            if f.needs().stream_events {
                f.on_stream_events(events, end, cx);
            }
        }
    }

    /// Runs every filter's completion hook; `Err` (the first refusal's reason): the response
    /// must not complete (its last byte is withheld).
    pub fn on_response_complete(&self, ex: &Exchange, cx: &Cx) -> Result<(), String> {
        let mut result = Ok(());
        for f in &self.filters {
            if let Err(e) = f.on_response_complete(ex, cx) {
                result = result.and(Err(e));
            }
        }
        result
    }

    /// Whether a completion hook may refuse (see [`Filter::gates_completion`]).
    pub fn gates_completion(&self) -> bool {
        self.filters.iter().any(|f| f.gates_completion())
    }

    /// `Err` (why) while a filter refuses every request anyway (see [`Filter::ready`]).
    pub fn ready(&self) -> Result<(), String> {
        self.filters.iter().try_for_each(|f| f.ready())
    }

    pub async fn on_log(&self, ex: &Exchange, cx: &Cx) {
        for f in &self.filters {
            f.on_log(ex, cx).await;
        }
    }

    /// Puts an event on the record (see [`Filter::on_event`]): a key change made through the
    /// key API. The audit filter writes it on the same chain as the requests.
    pub async fn on_event(&self, cx: &Cx, ex: &Exchange) {
        for f in &self.filters {
            f.on_event(cx, ex).await;
        }
    }

    pub async fn shutdown(&self) {
        for f in &self.filters {
            f.shutdown().await;
        }
    }
}
