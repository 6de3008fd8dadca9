package service

import (
	"context"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/maas-platform/maas/control/internal/vectorindex"
	"github.com/maas-platform/maas/control/internal/vectorindex/embedded"
	"github.com/maas-platform/maas/control/internal/vectorindex/milvus"
	"github.com/maas-platform/maas/pkg/config"
)

// MilvusOptions select Milvus as the vector index of vector stores (MAAS_MILVUS_*). With
// Addr empty the embedded index is used.
type MilvusOptions struct {
	// Addr is Milvus's host:port (MAAS_MILVUS_ADDR). Control does not wait for it: the
	// client connects in the background and vector-store calls fail until it has.
	Addr string
	// Token is an API key or "user:password" (MAAS_MILVUS_TOKEN); it overrides Username and
	// Password.
	Token string
	// Username and Password, when Milvus has authentication on (MAAS_MILVUS_USERNAME,
	// MAAS_MILVUS_PASSWORD).
	Username, Password string
	// DB is the Milvus database (MAAS_MILVUS_DB; empty: "default").
	DB string
}

func bindMilvus(l *config.Loader, o *MilvusOptions) {
	l.String(&o.Addr, "MAAS_MILVUS_ADDR", "milvus-addr", "", "Milvus host:port for the vector index of vector stores (empty: the embedded index, in PostgreSQL)")
	l.Secret(&o.Token, "MAAS_MILVUS_TOKEN", "milvus-token", "", "Milvus API key or user:password token")
	l.String(&o.Username, "MAAS_MILVUS_USERNAME", "milvus-username", "", "Milvus user name")
	l.Secret(&o.Password, "MAAS_MILVUS_PASSWORD", "milvus-password", "", "Milvus password")
	l.String(&o.DB, "MAAS_MILVUS_DB", "milvus-db", "", "Milvus database (empty: default)")
}

func (o MilvusOptions) validate() error {
	if o.Addr != "" {
		return nil
	}
	for name, v := range map[string]string{
		"MAAS_MILVUS_TOKEN": o.Token, "MAAS_MILVUS_USERNAME": o.Username,
		"MAAS_MILVUS_PASSWORD": o.Password, "MAAS_MILVUS_DB": o.DB,
	} {
		if v != "" {
			return &config.Error{Name: name, Msg: "is set but MAAS_MILVUS_ADDR is empty (the embedded index would be used)"}
		}
	}
	return nil
}

// newVectorIndex returns the index of vector stores: Milvus when MAAS_MILVUS_ADDR is set
// (connecting in the background, never blocking start-up), the embedded index on pool
// otherwise. stop releases what the index holds (Milvus's connection); call it once the
// server stopped.
func newVectorIndex(pool *pgxpool.Pool, o Options, log *slog.Logger) (vectorindex.Index, func(context.Context) error, error) {
	m := o.Milvus
	if m.Addr == "" {
		log.Info("vector index: embedded (PostgreSQL)")
		idx := embedded.New(pool, embedded.Options{Logger: log, CacheBytes: int64(o.Knowledge.IndexCacheBytes)})
		return idx, func(context.Context) error { return nil }, nil
	}
	idx, err := milvus.New(milvus.Options{
		Addr: m.Addr, Token: m.Token, Username: m.Username, Password: m.Password, DBName: m.DB, Logger: log,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info("vector index: Milvus (connecting in the background)", "addr", m.Addr)
	return idx, idx.Stop, nil
}
