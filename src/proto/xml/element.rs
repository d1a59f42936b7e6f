//! PLACEHOLDER: the owned element tree (helper writes it).
use super::error::XmlError;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

impl Element {
    pub(crate) fn from_checked(_bytes: &[u8], _inherited: &[(&str, &str)]) -> Element {
        todo!()
    }
    pub fn parse(_s: &str) -> Result<Element, XmlError> {
        todo!()
    }
}
