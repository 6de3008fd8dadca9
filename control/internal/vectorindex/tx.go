package vectorindex

import (
	"context"

	"github.com/jackc/pgx/v5"
)

type txKey struct{}

// WithTx returns ctx carrying the caller's PostgreSQL transaction. An implementation that
// keeps its data in the same database (the embedded index) runs its writes inside it (as a
// savepoint), so they commit or roll back with the caller's rows and take no second
// connection from the pool while the caller holds one; other implementations ignore it.
func WithTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFrom returns the transaction WithTx put in ctx.
func TxFrom(ctx context.Context) (pgx.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(pgx.Tx)
	return tx, ok && tx != nil
}
