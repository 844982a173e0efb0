//! Users (bearer tokens) and a small RBAC rule table.

use std::collections::HashMap;

/// An authenticated user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request asks to do, in RBAC terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// The "User "x" cannot ..." part of a Forbidden message, as the RBAC authorizer words it.
    pub fn denial(&self, user: &str) -> String {
        let resource = if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!("User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}", self.verb, self.group)
    }
}

/// One allow rule, like a PolicyRule bound by a (Cluster)RoleBinding.
#[derive(Debug, Clone)]
pub struct Rule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    /// `pods`, `pods/attach`, `*` (everything, subresources included) or `*/scale`.
    pub resources: Vec<String>,
    /// Empty: every namespace and cluster-scoped resources (a ClusterRoleBinding).
    pub namespaces: Vec<String>,
    /// A PolicyRule's `resourceNames`: empty allows every object, else only
    /// these by name. Like the real authorizer, a request without a name
    /// (list, create of a new object) is not allowed by a named rule.
    pub names: Vec<String>,
}

impl Rule {
    /// Allows `verbs` on `resources` in every API group and namespace.
    pub fn new(verbs: &[&str], resources: &[&str]) -> Self {
        Rule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: vec!["*".into()],
            resources: resources.iter().map(|s| s.to_string()).collect(),
            namespaces: vec![],
            names: vec![],
        }
    }

    /// Everything, everywhere (cluster-admin).
    pub fn admin() -> Self {
        Rule::new(&["*"], &["*"])
    }

    /// Limits the rule to these API groups (`""` is the core group).
    pub fn groups(mut self, groups: &[&str]) -> Self {
        self.api_groups = groups.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Limits the rule to one namespace (a RoleBinding there). Can be repeated.
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.namespaces.push(ns.to_string());
        self
    }

    /// Limits the rule to objects of these names (`resourceNames`).
    pub fn named(mut self, names: &[&str]) -> Self {
        self.names.extend(names.iter().map(|s| s.to_string()));
        self
    }

    pub fn allows(&self, a: &Attributes) -> bool {
        let any = |list: &[String], want: &str| list.iter().any(|x| x == "*" || x == want);
        let resource_ok = self.resources.iter().any(|r| {
            if r == "*" {
                return true;
            }
            if a.subresource.is_empty() {
                r == &a.resource
            } else {
                *r == format!("{}/{}", a.resource, a.subresource) || *r == format!("*/{}", a.subresource)
            }
        });
        let ns_ok = self.namespaces.is_empty() || (!a.namespace.is_empty() && self.namespaces.contains(&a.namespace));
        let name_ok = self.names.is_empty() || (!a.name.is_empty() && self.names.contains(&a.name));
        any(&self.verbs, &a.verb) && any(&self.api_groups, &a.group) && resource_ok && ns_ok && name_ok
    }
}

/// Tokens, users and their rules.
#[derive(Debug, Clone, Default)]
pub struct Rbac {
    tokens: HashMap<String, User>,
    rules: HashMap<String, Vec<Rule>>,
}

impl Rbac {
    pub fn add_user(&mut self, name: &str, token: &str, groups: &[&str]) {
        let user = User { name: name.into(), groups: groups.iter().map(|s| s.to_string()).collect() };
        self.tokens.insert(token.into(), user);
    }

    pub fn allow(&mut self, user: &str, rule: Rule) {
        self.rules.entry(user.into()).or_default().push(rule);
    }

    /// Drops every rule of a user.
    pub fn revoke_all(&mut self, user: &str) {
        self.rules.remove(user);
    }

    pub fn authenticate(&self, token: &str) -> Option<User> {
        self.tokens.get(token).cloned()
    }

    /// Every user with a token.
    pub fn user_names(&self) -> Vec<String> {
        self.tokens.values().map(|u| u.name.clone()).collect()
    }

    pub fn token_of(&self, user: &str) -> Option<String> {
        self.tokens.iter().find(|(_, u)| u.name == user).map(|(t, _)| t.clone())
    }

    pub fn authorize(&self, user: &User, a: &Attributes) -> bool {
        if user.groups.iter().any(|g| g == "system:masters") {
            return true;
        }
        self.rules.get(&user.name).is_some_and(|rules| rules.iter().any(|r| r.allows(a)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_message() {
        let a =
            Attributes { verb: "create".into(), resource: "pods".into(), namespace: "y".into(), ..Default::default() };
        assert_eq!(
            a.denial("x"),
            "User \"x\" cannot create resource \"pods\" in API group \"\" in the namespace \"y\""
        );
    }

    #[test]
    fn rules_match_subresources_and_namespaces() {
        let r = Rule::new(&["create"], &["pods/attach"]).in_namespace("a");
        let mut a = Attributes {
            verb: "create".into(),
            resource: "pods".into(),
            subresource: "attach".into(),
            namespace: "a".into(),
            ..Default::default()
        };
        assert!(r.allows(&a));
        a.namespace = "b".into();
        assert!(!r.allows(&a));
        a.namespace = "a".into();
        a.subresource.clear();
        assert!(!r.allows(&a));
    }

    #[test]
    fn named_rules_allow_only_those_objects() {
        let r = Rule::new(&["create"], &["pods/exec"]).groups(&[""]).named(&["a"]);
        let mut a = Attributes {
            verb: "create".into(),
            resource: "pods".into(),
            subresource: "exec".into(),
            namespace: "default".into(),
            name: "a".into(),
            ..Default::default()
        };
        assert!(r.allows(&a));
        a.name = "b".into();
        assert!(!r.allows(&a));
        // No name in the request: a named rule does not cover it.
        a.name.clear();
        assert!(!r.allows(&a));
        // pods/exec does not grant pods/attach.
        a.name = "a".into();
        a.subresource = "attach".into();
        assert!(!r.allows(&a));
    }
}
