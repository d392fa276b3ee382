//! Which decoder levels get a transformer block: one type, parsed in one place, for the flag
//! (`--transformer-levels 1,2|all|none|coarsest`) and for config.toml alike.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TransformerLevels {
    /// The coarsest decoder level (the default).
    #[default]
    Coarsest,
    /// No transformer.
    None,
    /// Before every decoder block, as the seed's design puts them.
    All,
    /// These decoder levels (0 = full resolution).
    Levels(Vec<usize>),
}

impl TransformerLevels {
    /// The levels of a model of `depth` levels (decoder levels are 0..depth-1).
    pub fn resolve(&self, depth: usize) -> Vec<usize> {
        match self {
            Self::Coarsest if depth >= 2 => vec![depth - 2],
            Self::Coarsest | Self::None => Vec::new(),
            Self::All => (0..depth.saturating_sub(1)).collect(),
            Self::Levels(v) => v.clone(),
        }
    }
}

impl FromStr for TransformerLevels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "all" => Ok(Self::All),
            "coarsest" | "default" => Ok(Self::Coarsest),
            list => list
                .split(',')
                .map(|v| v.trim().parse::<usize>().map_err(|_| format!("'{v}' is not a level (use e.g. 2, 1,2, all, coarsest or none)")))
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Levels),
        }
    }
}

impl fmt::Display for TransformerLevels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Coarsest => f.write_str("coarsest"),
            Self::None => f.write_str("none"),
            Self::All => f.write_str("all"),
            Self::Levels(v) => f.write_str(&v.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")),
        }
    }
}

/// In TOML: a list of levels, or "all", "none", "coarsest" (an empty list is "none").
impl Serialize for TransformerLevels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Levels(v) => v.serialize(s),
            other => s.serialize_str(&other.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for TransformerLevels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<usize>),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::List(l) if l.is_empty() => Ok(Self::None),
            Raw::List(l) => Ok(Self::Levels(l)),
            Raw::Word(w) => w.parse().map_err(|e| serde::de::Error::custom(format!("transformer_levels: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_and_toml_read_the_same_words() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct T {
            l: TransformerLevels,
        }
        for (text, want) in [
            ("none", TransformerLevels::None),
            ("all", TransformerLevels::All),
            ("coarsest", TransformerLevels::Coarsest),
            ("1,2", TransformerLevels::Levels(vec![1, 2])),
        ] {
            assert_eq!(text.parse::<TransformerLevels>().unwrap(), want);
            let toml_text = toml::to_string(&T { l: want.clone() }).unwrap();
            assert_eq!(toml::from_str::<T>(&toml_text).unwrap().l, want, "{toml_text}");
            let word = format!("l = \"{text}\"");
            if !text.contains(',') {
                assert_eq!(toml::from_str::<T>(&word).unwrap().l, want);
            }
        }
        assert_eq!(toml::from_str::<T>("l = []").unwrap().l, TransformerLevels::None);
        assert!(toml::from_str::<T>("l = \"most\"").is_err());
        assert!("x".parse::<TransformerLevels>().is_err());
        assert_eq!(TransformerLevels::All.resolve(4), vec![0, 1, 2]);
        assert_eq!(TransformerLevels::Coarsest.resolve(4), vec![2]);
        assert_eq!(TransformerLevels::Coarsest.resolve(1), Vec::<usize>::new());
    }
}
