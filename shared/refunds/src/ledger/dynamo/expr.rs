//! The expression builder: one update expression (SET / REMOVE / ADD / DELETE clauses) and one condition,
//! with the `#name` and `:value` placeholders they use.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// An update/condition expression with its placeholders. Every attribute goes through a `#name`
/// placeholder so DynamoDB's long reserved-word list (STATUS, ...) never bites.
#[derive(Debug, Default)]
pub(super) struct Expr {
    pub(super) names: HashMap<String, String>,
    pub(super) values: HashMap<String, AttributeValue>,
    pub(super) set: Vec<String>,
    pub(super) remove: Vec<String>,
    pub(super) add: Vec<String>,
    /// `DELETE` clauses: remove elements from a set.
    pub(super) delete: Vec<String>,
    /// Empty: unconditional.
    pub(super) condition: String,
}

impl Expr {
    /// The placeholder of `attr` (`#n0`, `#n1`, ...: plain alphanumerics are always valid).
    pub(super) fn n(&mut self, attr: &str) -> String {
        if let Some((k, _)) = self.names.iter().find(|(_, a)| a.as_str() == attr) {
            return k.clone();
        }
        let k = format!("#n{}", self.names.len());
        self.names.insert(k.clone(), attr.to_owned());
        k
    }

    /// A new value placeholder (`:v0`, ...); `_what` only documents the call site.
    pub(super) fn v(&mut self, _what: &str, val: AttributeValue) -> String {
        let k = format!(":v{}", self.values.len());
        self.values.insert(k.clone(), val);
        k
    }

    pub(super) fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        if !self.add.is_empty() {
            parts.push(format!("ADD {}", self.add.join(", ")));
        }
        if !self.delete.is_empty() {
            parts.push(format!("DELETE {}", self.delete.join(", ")));
        }
        parts.join(" ")
    }

    /// The condition, or `None` when the write is unconditional (DynamoDB refuses an empty one).
    pub(super) fn condition_expression(&self) -> Option<String> {
        (!self.condition.is_empty()).then(|| self.condition.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_shared_values_are_not_and_clauses_come_in_order() {
        // GIVEN an expression that names one attribute twice and sets, removes and adds
        let mut e = Expr::default();
        let (a, b, a2) = (e.n("status"), e.n("version"), e.n("status"));
        let (v1, v2) = (
            e.v("x", AttributeValue::N("1".into())),
            e.v("x", AttributeValue::N("1".into())),
        );
        e.set.push(format!("{a} = {v1}"));
        e.remove.push(b.clone());
        e.add.push(format!("{b} {v2}"));
        // THEN the name has one placeholder, each value its own, and SET precedes REMOVE and ADD
        assert_eq!(a, a2);
        assert_ne!(v1, v2);
        assert_eq!(e.names.len(), 2);
        assert_eq!(
            e.update_expression(),
            "SET #n0 = :v0 REMOVE #n1 ADD #n1 :v1"
        );
        assert_eq!(e.condition_expression(), None);
    }
}
