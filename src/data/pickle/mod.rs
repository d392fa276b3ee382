//! A reader for the subset of Python's pickle format that holds plain data and numpy arrays
//! (the LIDC file of the public Probabilistic U-Net port). Nothing is executed: the only
//! callables it accepts are the handful numpy's own pickles name (`_reconstruct`, `dtype`,
//! `_frombuffer`, `_codecs.encode`, `bytearray`), each interpreted here; anything else is an
//! error naming it.

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::{Result, anyhow, bail};

mod numpy;
use numpy::{build, call};

/// A dict's items, in insertion order, shared by every reference to it.
pub type Pairs = Rc<RefCell<Vec<(Value, Value)>>>;

/// A decoded value.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Pairs),
    /// `module.name`, before it is called.
    Global(Rc<(String, String)>),
    Object(Rc<RefCell<Object>>),
}

/// What numpy's callables build.
#[derive(Debug, Clone)]
pub enum Object {
    /// `_reconstruct(ndarray, ...)`: an array waiting for its state (BUILD).
    EmptyArray,
    Array(NdArray),
    DType(DType),
}

/// A numpy dtype: its kind and size (`f4`, `u1`, ...) and byte order.
#[derive(Debug, Clone, PartialEq)]
pub struct DType {
    pub code: String,
    pub big_endian: bool,
}

/// A numpy array's shape and its values, in C order, as f64 (exact for every integer and
/// float type the LIDC files use).
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Object(o) => match &*o.borrow() {
                Object::Array(_) => "numpy array",
                Object::DType(_) => "numpy dtype",
                Object::EmptyArray => "unfinished numpy array",
            },
        }
    }

    /// The numpy array this value holds, if any.
    pub fn array(&self) -> Option<NdArray> {
        match self {
            Value::Object(o) => match &*o.borrow() {
                Object::Array(a) => Some(a.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(l) => Some(l.borrow().clone()),
            Value::Tuple(t) => Some(t.to_vec()),
            _ => None,
        }
    }

    /// A dict's value under the string key `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        let Value::Dict(d) = self else { return None };
        d.borrow().iter().find(|(k, _)| matches!(k, Value::Str(s) if &**s == key)).map(|(_, v)| v.clone())
    }
}

/// Decodes one pickle.
pub fn parse(bytes: &[u8]) -> Result<Value> {
    Machine { data: bytes, at: 0, stack: Vec::new(), marks: Vec::new(), memo: Default::default() }.run()
}

struct Machine<'a> {
    data: &'a [u8],
    at: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u64, Value>,
}

impl Machine<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| anyhow!("the pickle ends early"))?;
        let s = &self.data[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn uint(&mut self, n: usize) -> Result<u64> {
        Ok(self.take(n)?.iter().rev().fold(0u64, |v, &b| v << 8 | b as u64))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.at..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| anyhow!("the pickle ends early"))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.at += end + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| anyhow!("malformed pickle: the stack is empty"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("malformed pickle: no mark"))?;
        if m > self.stack.len() {
            bail!("malformed pickle: mark beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }
    fn top(&self) -> Result<&Value> {
        self.stack.last().ok_or_else(|| anyhow!("malformed pickle: the stack is empty"))
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| anyhow!("malformed pickle: a string is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }
    fn bytes(&mut self, n: usize) -> Result<Value> {
        Ok(Value::Bytes(Rc::new(self.take(n)?.to_vec())))
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.take(1)?[0];
            let v = match op {
                0x80 => {
                    let proto = self.take(1)?[0];
                    if proto > 5 {
                        bail!("pickle protocol {proto} is newer than 5");
                    }
                    continue;
                }
                0x95 => {
                    self.take(8)?;
                    continue;
                }
                b'.' => return self.pop(),
                b'(' => {
                    self.marks.push(self.stack.len());
                    continue;
                }
                b'0' => {
                    self.pop()?;
                    continue;
                }
                b'1' => {
                    self.pop_mark()?;
                    continue;
                }
                b'2' => self.top()?.clone(),
                b'N' => Value::None,
                0x88 => Value::Bool(true),
                0x89 => Value::Bool(false),
                b'J' => Value::Int(self.uint(4)? as u32 as i32 as i64),
                b'K' => Value::Int(self.uint(1)? as i64),
                b'M' => Value::Int(self.uint(2)? as i64),
                0x8a => {
                    let n = self.uint(1)? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        bail!("an integer of {n} bytes does not fit 64 bits");
                    }
                    let mut v = b.iter().rev().fold(0i64, |v, &x| v << 8 | x as i64);
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    Value::Int(v)
                }
                b'G' => Value::Float(f64::from_be_bytes(self.take(8)?.try_into()?)),
                0x8c => {
                    let n = self.uint(1)? as usize;
                    self.string(n)?
                }
                b'X' => {
                    let n = self.uint(4)? as usize;
                    self.string(n)?
                }
                0x8d => {
                    let n = self.uint(8)? as usize;
                    self.string(n)?
                }
                b'U' | b'C' => {
                    let n = self.uint(1)? as usize;
                    self.bytes(n)?
                }
                b'T' | b'B' => {
                    let n = self.uint(4)? as usize;
                    self.bytes(n)?
                }
                0x8e | 0x96 => {
                    let n = self.uint(8)? as usize;
                    self.bytes(n)?
                }
                0x97 => bail!("the pickle keeps its buffers out of band (protocol 5 with buffer_callback); save it without one"),
                0x98 | 0x99 => continue,
                b'}' => Value::Dict(Default::default()),
                b']' => Value::List(Default::default()),
                b')' => Value::Tuple(Rc::new(Vec::new())),
                b't' => Value::Tuple(Rc::new(self.pop_mark()?)),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        bail!("malformed pickle: a tuple of {n} on a shorter stack");
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    Value::Tuple(Rc::new(items))
                }
                b'l' => Value::List(Rc::new(RefCell::new(self.pop_mark()?))),
                b'd' => {
                    let items = self.pop_mark()?;
                    Value::Dict(Rc::new(RefCell::new(pairs(items)?)))
                }
                b'a' => {
                    let v = self.pop()?;
                    list_of(self.top()?)?.borrow_mut().push(v);
                    continue;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    list_of(self.top()?)?.borrow_mut().extend(items);
                    continue;
                }
                b's' => {
                    let (v, k) = (self.pop()?, self.pop()?);
                    dict_of(self.top()?)?.borrow_mut().push((k, v));
                    continue;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    dict_of(self.top()?)?.borrow_mut().extend(pairs(items)?);
                    continue;
                }
                b'c' => {
                    let (module, name) = (self.line()?, self.line()?);
                    Value::Global(Rc::new((module, name)))
                }
                0x93 => {
                    let (name, module) = (self.pop()?, self.pop()?);
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => Value::Global(Rc::new((m.to_string(), n.to_string()))),
                        _ => bail!("malformed pickle: STACK_GLOBAL without two strings"),
                    }
                }
                b'R' => {
                    let (args, f) = (self.pop()?, self.pop()?);
                    call(&f, &args)?
                }
                b'b' => {
                    let state = self.pop()?;
                    build(self.top()?, &state)?;
                    continue;
                }
                0x94 => {
                    let v = self.top()?.clone();
                    let k = self.memo.len() as u64;
                    self.memo.insert(k, v);
                    continue;
                }
                b'q' | b'r' => {
                    let k = if op == b'q' { self.uint(1)? } else { self.uint(4)? };
                    let v = self.top()?.clone();
                    self.memo.insert(k, v);
                    continue;
                }
                b'h' | b'j' => {
                    let k = if op == b'h' { self.uint(1)? } else { self.uint(4)? };
                    self.memo.get(&k).cloned().ok_or_else(|| anyhow!("malformed pickle: memo {k} missing"))?
                }
                other => {
                    bail!("pickle opcode 0x{other:02x} ({:?}) is not supported: only plain data and numpy arrays are read", other as char)
                }
            };
            self.stack.push(v);
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        bail!("malformed pickle: a dict with an odd item count");
    }
    let mut it = items.into_iter();
    Ok(std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect())
}

fn list_of(v: &Value) -> Result<&Rc<RefCell<Vec<Value>>>> {
    match v {
        Value::List(l) => Ok(l),
        other => bail!("malformed pickle: append to a {}", other.type_name()),
    }
}

fn dict_of(v: &Value) -> Result<&Pairs> {
    match v {
        Value::Dict(d) => Ok(d),
        other => bail!("malformed pickle: set an item of a {}", other.type_name()),
    }
}
