package knowledge

import (
	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
)

// Routes adds the vector stores API to srv.
func (s *Service) Routes(srv *server.Server) {
	srv.Handle("POST", "/v1/vector_stores", server.Authenticated, s.handleCreate)
	srv.Handle("GET", "/v1/vector_stores", server.Authenticated, s.handleList)
	srv.Handle("GET", "/v1/vector_stores/{id}", server.Authenticated, s.handleGet)
	srv.Handle("POST", "/v1/vector_stores/{id}", server.Authenticated, s.handleModify)
	srv.Handle("DELETE", "/v1/vector_stores/{id}", server.Authenticated, s.handleDelete)
	srv.Handle("POST", "/v1/vector_stores/{id}/search", server.Authenticated, s.handleSearch)

	srv.Handle("POST", "/v1/vector_stores/{id}/files", server.Authenticated, s.handleAttach)
	srv.Handle("GET", "/v1/vector_stores/{id}/files", server.Authenticated, s.handleListFiles)
	srv.Handle("GET", "/v1/vector_stores/{id}/files/{file_id}", server.Authenticated, s.handleGetFile)
	srv.Handle("POST", "/v1/vector_stores/{id}/files/{file_id}", server.Authenticated, s.handleUpdateFile)
	srv.Handle("DELETE", "/v1/vector_stores/{id}/files/{file_id}", server.Authenticated, s.handleDetach)
	srv.Handle("GET", "/v1/vector_stores/{id}/files/{file_id}/content", server.Authenticated, s.handleContent)

	srv.Handle("POST", "/v1/vector_stores/{id}/file_batches", server.Authenticated, s.handleCreateBatch)
	srv.Handle("GET", "/v1/vector_stores/{id}/file_batches/{batch_id}", server.Authenticated, s.handleGetBatch)
	srv.Handle("POST", "/v1/vector_stores/{id}/file_batches/{batch_id}/cancel", server.Authenticated, s.handleCancelBatch)
	srv.Handle("GET", "/v1/vector_stores/{id}/file_batches/{batch_id}/files", server.Authenticated, s.handleBatchFiles)
}

func caller(c *server.Call) Caller {
	return Caller{UserID: c.Principal.UserID, Roles: c.Principal.Roles, Admin: c.Principal.IsAdmin()}
}

// listParams reads limit, after and order (desc by default, as OpenAI's lists).
func listParams(c *server.Call) (server.Page, bool, error) {
	page, err := c.PageParams()
	if err != nil {
		return page, false, err
	}
	switch o := string(c.RC.QueryArgs().Peek("order")); o {
	case "", "desc":
		return page, true, nil
	case "asc":
		return page, false, nil
	}
	return page, false, apierr.Param("order", "order must be \"asc\" or \"desc\"")
}

func (s *Service) handleCreate(c *server.Call) error {
	var r createStoreRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	v, err := s.CreateStore(c.Ctx, caller(c), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, v)
}

func (s *Service) handleList(c *server.Call) error {
	page, desc, err := listParams(c)
	if err != nil {
		return err
	}
	out, err := s.ListStores(c.Ctx, caller(c), page.After, page.Limit, desc)
	if err != nil {
		return err
	}
	return c.JSON(200, withFirst(server.NewList(out, page.Limit, func(v *VectorStore) any { return v.ID }), func(v *VectorStore) any { return v.ID }))
}

// withFirst adds OpenAI's first_id to a list envelope.
func withFirst[T any](l server.List[T], id func(T) any) any {
	var first any
	if len(l.Data) > 0 {
		first = id(l.Data[0])
	}
	return struct {
		server.List[T]
		FirstID any `json:"first_id"`
	}{l, first}
}

func (s *Service) handleGet(c *server.Call) error {
	v, err := s.GetStore(c.Ctx, caller(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(200, v)
}

func (s *Service) handleModify(c *server.Call) error {
	var r modifyStoreRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	v, err := s.ModifyStore(c.Ctx, caller(c), c.Param("id"), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, v)
}

func (s *Service) handleDelete(c *server.Call) error {
	d, err := s.DeleteStore(c.Ctx, caller(c), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(200, d)
}

func (s *Service) handleSearch(c *server.Call) error {
	var r searchRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	p, err := s.Search(c.Ctx, caller(c), c.Param("id"), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, p)
}

func (s *Service) handleAttach(c *server.Call) error {
	var r attachRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	f, err := s.AttachFile(c.Ctx, caller(c), c.Param("id"), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, f)
}

func fileID(f *StoreFile) any { return f.ID }

func (s *Service) handleListFiles(c *server.Call) error {
	page, desc, err := listParams(c)
	if err != nil {
		return err
	}
	ff := fileFilter{Status: string(c.RC.QueryArgs().Peek("filter"))}
	out, err := s.ListFiles(c.Ctx, caller(c), c.Param("id"), ff, page.After, page.Limit, desc)
	if err != nil {
		return err
	}
	return c.JSON(200, withFirst(server.NewList(out, page.Limit, fileID), fileID))
}

func (s *Service) handleGetFile(c *server.Call) error {
	f, err := s.GetFile(c.Ctx, caller(c), c.Param("id"), c.Param("file_id"))
	if err != nil {
		return err
	}
	return c.JSON(200, f)
}

func (s *Service) handleUpdateFile(c *server.Call) error {
	var r updateFileRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	f, err := s.UpdateFile(c.Ctx, caller(c), c.Param("id"), c.Param("file_id"), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, f)
}

func (s *Service) handleDetach(c *server.Call) error {
	d, err := s.DetachFile(c.Ctx, caller(c), c.Param("id"), c.Param("file_id"))
	if err != nil {
		return err
	}
	return c.JSON(200, d)
}

func (s *Service) handleContent(c *server.Call) error {
	parts, err := s.FileContent(c.Ctx, caller(c), c.Param("id"), c.Param("file_id"))
	if err != nil {
		return err
	}
	return c.JSON(200, map[string]any{"object": "vector_store.file_content.page", "data": parts, "has_more": false, "next_page": nil})
}

func (s *Service) handleCreateBatch(c *server.Call) error {
	var r batchRequest
	if err := c.Decode(&r); err != nil {
		return err
	}
	b, err := s.CreateBatch(c.Ctx, caller(c), c.Param("id"), &r)
	if err != nil {
		return err
	}
	return c.JSON(200, b)
}

func (s *Service) handleGetBatch(c *server.Call) error {
	b, err := s.GetBatch(c.Ctx, caller(c), c.Param("id"), c.Param("batch_id"))
	if err != nil {
		return err
	}
	return c.JSON(200, b)
}

func (s *Service) handleCancelBatch(c *server.Call) error {
	b, err := s.CancelBatch(c.Ctx, caller(c), c.Param("id"), c.Param("batch_id"))
	if err != nil {
		return err
	}
	return c.JSON(200, b)
}

func (s *Service) handleBatchFiles(c *server.Call) error {
	page, desc, err := listParams(c)
	if err != nil {
		return err
	}
	out, err := s.ListBatchFiles(c.Ctx, caller(c), c.Param("id"), c.Param("batch_id"),
		string(c.RC.QueryArgs().Peek("filter")), page.After, page.Limit, desc)
	if err != nil {
		return err
	}
	return c.JSON(200, withFirst(server.NewList(out, page.Limit, fileID), fileID))
}
