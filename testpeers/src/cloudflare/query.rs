//! Query parameters of the list endpoints, checked strictly, and the page they select.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::records::ApiError;

/// Query parameters: only `allowed` names, `page` ≥ 1, `per_page` in 1..=max.
pub struct Query {
    params: HashMap<String, String>,
    page: usize,
    per_page: usize,
}

impl Query {
    pub fn parse(
        pairs: &[(String, String)],
        allowed: &[&str],
        max_per_page: u32,
    ) -> Result<Query, ApiError> {
        let mut params = HashMap::new();
        for (k, v) in pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::new(
                    400,
                    9207,
                    format!("Unknown query parameter {k:?}."),
                ));
            }
            params.insert(k.clone(), v.clone());
        }
        let num = |k: &str, default: usize, max: usize| -> Result<usize, ApiError> {
            match params.get(k) {
                None => Ok(default),
                Some(v) => v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        ApiError::new(
                            400,
                            9207,
                            format!("{k} must be an integer 1..={max}, got {v:?}."),
                        )
                    }),
            }
        };
        let page = num("page", 1, usize::MAX)?;
        let per_page = num("per_page", 100, max_per_page as usize)?;
        Ok(Query {
            params,
            page,
            per_page,
        })
    }

    pub fn get(&self, k: &str) -> Option<&String> {
        self.params.get(k)
    }

    /// One page, with all five `result_info` fields; past the end, an empty page.
    pub fn page(&self, items: Vec<Value>) -> (Value, Option<Value>) {
        let total = items.len();
        let total_pages = total.div_ceil(self.per_page).max(1);
        let page: Vec<Value> = items
            .into_iter()
            .skip((self.page - 1).saturating_mul(self.per_page))
            .take(self.per_page)
            .collect();
        let info = json!({"page": self.page, "per_page": self.per_page, "count": page.len(), "total_count": total, "total_pages": total_pages});
        (Value::Array(page), Some(info))
    }
}
