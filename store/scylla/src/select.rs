//! Row reads on [`Inner`]: one row, or every row of a multi-row read page by page.

use scylla::deserialize::row::DeserializeRow;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;

use crate::error::OpError;
use crate::statements::Stmt;
use crate::store::Inner;

impl Inner {
    /// The first row of `stmt`'s answer (`None`: no row).
    pub(crate) async fn select_one<R>(
        &self,
        stmt: Stmt,
        values: impl SerializeRow,
    ) -> Result<Option<R>, OpError>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let rows = self.exec(stmt, values).await?.into_rows_result()?;
        Ok(rows.maybe_first_row::<R>()?)
    }

    /// Every row, page by page (`page_size` rows per round trip).
    pub(crate) async fn select_all<R>(
        &self,
        stmt: Stmt,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, OpError>
    where
        R: for<'f> DeserializeRow<'f, 'f>,
    {
        let prepared = self.stmts.get(stmt);
        let mut out = Vec::new();
        let mut state = PagingState::start();
        loop {
            let (result, next) = self.session.execute_single_page(prepared, &values, state).await?;
            let rows = result.into_rows_result()?;
            for r in rows.rows::<R>()? {
                out.push(r?);
            }
            match next {
                PagingStateResponse::HasMorePages { state: s } => state = s,
                PagingStateResponse::NoMorePages => return Ok(out),
            }
        }
    }
}
