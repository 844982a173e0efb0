//! Images as this kubelet knows them: no registry and no layers, only a name
//! that stands for programs of this machine. Tests register what an image
//! name means; pod specs name images as Kubernetes users write them, so every
//! lookup goes through the normalized name a container runtime would use.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;

/// What an image name stands for on this machine.
#[derive(Debug, Clone, Default)]
pub struct Image {
    /// ENTRYPOINT: run when the container has no `command`.
    pub entrypoint: Vec<String>,
    /// CMD: the arguments when the container has neither `command` nor `args`.
    pub cmd: Vec<String>,
    /// Paths as commands inside the image name them → files on this machine.
    pub files: Vec<(String, PathBuf)>,
    /// Environment the image sets.
    pub env: Vec<(String, String)>,
}

impl Image {
    /// An image with no entrypoint: containers name a program of this machine in `command`.
    pub fn host() -> Self {
        Image::default()
    }

    /// An image whose entrypoint is this executable; it is also known inside the
    /// image by its own path and its file name (`command: ["tlsspy-agent"]`).
    pub fn executable(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut img = Image { entrypoint: vec![path.display().to_string()], ..Image::default() };
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            img.files.push((name.to_string(), path.clone()));
            img.files.push((format!("/{name}"), path.clone()));
            img.files.push((format!("/usr/local/bin/{name}"), path.clone()));
        }
        img
    }

    /// Makes `in_image` (as a command names it) run `host_path`.
    pub fn with_file(mut self, in_image: &str, host_path: impl Into<PathBuf>) -> Self {
        self.files.push((in_image.to_string(), host_path.into()));
        self
    }

    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

/// `python:3` → `docker.io/library/python:3`, as container runtimes name images.
pub fn normalize_image(image: &str) -> String {
    let (first, _) = image.split_once('/').unwrap_or(("", image));
    let has_domain = image.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        image.to_string()
    } else if image.contains('/') {
        format!("docker.io/{image}")
    } else {
        format!("docker.io/library/{image}")
    };
    let last = full.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') && !full.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// Images by normalized name.
#[derive(Debug, Default)]
pub struct ImageTable {
    images: HashMap<String, Image>,
}

impl ImageTable {
    pub fn insert(&mut self, name: &str, image: Image) {
        self.images.insert(normalize_image(name), image);
    }

    pub fn get(&self, name: &str) -> Option<Image> {
        self.images.get(&normalize_image(name)).cloned()
    }
}

/// The `imageID` of a container status: `<repository>@sha256:<64 hex>`. There
/// is no manifest to digest, so the digest is a hash of the normalized name:
/// stable for one name, different between tags, as clients expect of a digest.
pub(super) fn image_id(image: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let full = normalize_image(image);
    let repo = full.rsplit_once(':').map_or(full.as_str(), |(r, _)| r).to_string();
    let mut hex = String::new();
    for i in 0u8..4 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (i, &full).hash(&mut h);
        hex.push_str(&format!("{:016x}", h.finish()));
    }
    format!("{repo}@sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_normalize() {
        assert_eq!(normalize_image("python:3"), "docker.io/library/python:3");
        assert_eq!(normalize_image("ghcr.io/tlsspy/agent:v0.1.0"), "ghcr.io/tlsspy/agent:v0.1.0");
        assert_eq!(normalize_image("curlimages/curl"), "docker.io/curlimages/curl:latest");
        assert_eq!(normalize_image("localhost:5000/x"), "localhost:5000/x:latest");
    }

    #[test]
    fn digests_and_registry_ports_are_not_tags() {
        // A digest is a version already; a port in the registry is no tag.
        assert_eq!(normalize_image("python@sha256:abcd"), "docker.io/library/python@sha256:abcd");
        assert_eq!(normalize_image("registry.local:5000/team/app"), "registry.local:5000/team/app:latest");
        assert_eq!(normalize_image("localhost/app:v1"), "localhost/app:v1");
    }

    #[test]
    fn table_finds_images_by_any_spelling() {
        let mut table = ImageTable::default();
        table.insert("python:3", Image::host().with_env("PYTHONUNBUFFERED", "1"));
        let img = table.get("docker.io/library/python:3").expect("same image");
        assert_eq!(img.env, [("PYTHONUNBUFFERED".to_string(), "1".to_string())]);
        assert!(table.get("python:2").is_none());
        assert!(table.get("python").is_none(), "python means python:latest");
    }

    #[test]
    fn executable_images_know_their_program_by_name_and_path() {
        let img = Image::executable("/opt/build/tlsspy-agent");
        assert_eq!(img.entrypoint, ["/opt/build/tlsspy-agent"]);
        let names: Vec<&str> = img.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tlsspy-agent", "/tlsspy-agent", "/usr/local/bin/tlsspy-agent"]);
        assert!(img.files.iter().all(|(_, p)| p == &PathBuf::from("/opt/build/tlsspy-agent")));
    }

    #[test]
    fn image_ids_are_digests_of_the_normalized_name() {
        let id = image_id("python:3");
        let (repo, hex) = id.split_once("@sha256:").expect("a digest");
        assert_eq!(repo, "docker.io/library/python");
        assert_eq!(hex.len(), 64);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, image_id("docker.io/library/python:3"));
        assert_ne!(id, image_id("python:3.12"));
    }
}
