//! `info(v [, label selectors])`: adds the identifying labels of matching info metrics
//! (Prometheus's `promql/info.go`).

use crate::eval::Evaluator;
use crate::parser::Call;
use crate::value::Matrix;
use crate::{Error, Result};

pub(crate) fn eval_info(_ev: &mut Evaluator<'_>, _c: &Call) -> Result<Matrix> {
    Err(Error::exec("info() is not supported yet"))
}
