//! numpy's side of a pickle: the callables its arrays and dtypes name, and their states.

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::{Result, anyhow, bail};

use super::{DType, NdArray, Object, Value};

fn is_numpy(module: &str, sub: &str) -> bool {
    module == format!("numpy.core.{sub}") || module == format!("numpy._core.{sub}")
}

fn obj(o: Object) -> Value {
    Value::Object(Rc::new(RefCell::new(o)))
}

/// The callables numpy's pickles name, interpreted.
pub(super) fn call(f: &Value, args: &Value) -> Result<Value> {
    let Value::Global(g) = f else { bail!("malformed pickle: a call of a {}", f.type_name()) };
    let (module, name) = (g.0.as_str(), g.1.as_str());
    let args = args.items().unwrap_or_default();
    match (module, name) {
        (m, "_reconstruct") if is_numpy(m, "multiarray") => Ok(obj(Object::EmptyArray)),
        ("numpy", "dtype") => match args.first() {
            Some(Value::Str(code)) => Ok(obj(Object::DType(DType { code: code.to_string(), big_endian: false }))),
            _ => bail!("numpy.dtype without a type code"),
        },
        (m, "_frombuffer") if is_numpy(m, "numeric") => {
            let [Value::Bytes(buf), dtype, Value::Tuple(shape), order] = &args[..] else {
                bail!("numpy _frombuffer with unexpected arguments")
            };
            let fortran = matches!(order, Value::Str(o) if &**o == "F");
            Ok(obj(Object::Array(array(buf, dtype, shape, fortran)?)))
        }
        ("_codecs", "encode") => match args.first() {
            // Protocol 2 stores bytes as latin-1 text.
            Some(Value::Str(s)) => Ok(Value::Bytes(Rc::new(s.chars().map(|c| c as u32 as u8).collect()))),
            _ => bail!("_codecs.encode without a string"),
        },
        ("builtins" | "__builtin__", "bytearray") => match args.first() {
            Some(Value::Bytes(b)) => Ok(Value::Bytes(b.clone())),
            None => Ok(Value::Bytes(Rc::new(Vec::new()))),
            _ => bail!("bytearray of an unexpected value"),
        },
        _ => bail!("the pickle calls {module}.{name}, which apunet does not run: only plain data and numpy arrays are read"),
    }
}

/// BUILD: a numpy array's or dtype's state.
pub(super) fn build(target: &Value, state: &Value) -> Result<()> {
    let Value::Object(o) = target else { bail!("the pickle sets the state of a {}, which apunet does not support", target.type_name()) };
    let items = state.items().unwrap_or_default();
    let mut o = o.borrow_mut();
    match &mut *o {
        Object::DType(d) => {
            if let Some(Value::Str(order)) = items.get(1) {
                d.big_endian = &**order == ">";
            }
        }
        Object::EmptyArray => {
            let [_, Value::Tuple(shape), dtype, Value::Bool(fortran), data] = &items[..] else {
                bail!("a numpy array with an unexpected state (object arrays are not supported)")
            };
            let Value::Bytes(buf) = data else { bail!("a numpy array of Python objects: only numeric arrays are read") };
            *o = Object::Array(array(buf, dtype, shape, *fortran)?);
        }
        Object::Array(_) => bail!("malformed pickle: a numpy array built twice"),
    }
    Ok(())
}

fn array(buf: &[u8], dtype: &Value, shape: &[Value], fortran: bool) -> Result<NdArray> {
    let Value::Object(d) = dtype else { bail!("a numpy array without a dtype") };
    let Object::DType(d) = &*d.borrow() else { bail!("a numpy array without a dtype") };
    let shape: Vec<usize> = shape
        .iter()
        .map(|v| match v {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => Err(anyhow!("a numpy array with a bad shape")),
        })
        .collect::<Result<_>>()?;
    let (kind, size) = d.code.split_at(1.min(d.code.len()));
    let size: usize = size.parse().map_err(|_| anyhow!("numpy dtype '{}' is not supported", d.code))?;
    let n: usize = shape.iter().product();
    if buf.len() != n * size {
        bail!("a numpy array of shape {shape:?} and dtype {} holds {} bytes, not {}", d.code, buf.len(), n * size);
    }
    let word = |c: &[u8]| -> u64 {
        let it: Box<dyn Iterator<Item = &u8>> = if d.big_endian { Box::new(c.iter()) } else { Box::new(c.iter().rev()) };
        it.fold(0u64, |v, &b| v << 8 | b as u64)
    };
    let values: Vec<f64> = buf
        .chunks_exact(size)
        .map(|c| {
            let w = word(c);
            Ok(match (kind, size) {
                ("f", 4) => f32::from_bits(w as u32) as f64,
                ("f", 8) => f64::from_bits(w),
                ("u" | "b", _) if size <= 8 => w as f64,
                ("i", _) if size <= 8 => ((w << (64 - 8 * size)) as i64 >> (64 - 8 * size)) as f64,
                _ => bail!("numpy dtype '{}' is not supported", d.code),
            })
        })
        .collect::<Result<_>>()?;
    let values = if fortran && shape.len() > 1 { to_c_order(&values, &shape) } else { values };
    Ok(NdArray { dtype: d.code.clone(), shape, values })
}

/// Fortran-ordered values of `shape` rearranged into C order.
fn to_c_order(values: &[f64], shape: &[usize]) -> Vec<f64> {
    use ndarray::ShapeBuilder;
    let f = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(shape).f(), values).expect("sizes checked");
    f.as_standard_layout().iter().copied().collect()
}
