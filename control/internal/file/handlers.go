package file

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/maas-platform/maas/control/internal/server"
	"github.com/maas-platform/maas/pkg/apierr"
)

// List page sizes: OpenAI accepts limit up to 10000; one page here holds at most
// MaxPage files (has_more and last_id carry on from there).
const (
	DefaultPage = 100
	MaxPage     = 1000
)

// multipartSlack is what the multipart framing and the purpose field may add to a file of
// MaxBytes in the request body.
const multipartSlack = 1 << 20

// Routes adds the Files API to srv. Every route is for any authenticated caller with the
// inference scope (keys reach it as they reach /v1/chat/completions, which is what the
// OpenAI SDKs expect); a caller sees only their own files, an admin any file by id and
// any user's list with ?user_id=.
func (s *Service) Routes(srv *server.Server) {
	srv.HandleWith("POST", "/v1/files", server.Authenticated, server.RouteOptions{
		MaxBody: s.o.MaxBytes + multipartSlack, Stream: true, Timeout: s.o.Timeout,
		TooLarge: fmt.Sprintf("the upload is larger than the %d bytes a file may have (MAAS_FILES_MAX_BYTES)", s.o.MaxBytes),
	}, s.handleUpload)
	srv.Handle("GET", "/v1/files", server.Authenticated, s.handleList)
	srv.Handle("GET", "/v1/files/{id}", server.Authenticated, s.handleGet)
	srv.Handle("DELETE", "/v1/files/{id}", server.Authenticated, s.handleDelete)
	srv.HandleWith("GET", "/v1/files/{id}/content", server.Authenticated,
		server.RouteOptions{Timeout: s.o.Timeout}, s.handleContent)
}

func notFound(id string) error {
	return apierr.New(apierr.NotFound, "no file with id %q", id)
}

// lookup is Get with the caller of c, mapping ErrNotFound to a 404.
func (s *Service) lookup(c *server.Call) (*File, error) {
	id := c.Param("id")
	f, err := s.Get(c.Ctx, id, c.Principal.UserID, c.Principal.IsAdmin())
	if errors.Is(err, ErrNotFound) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, apierr.Wrap(err, "get file")
	}
	return f, nil
}

func (s *Service) handleUpload(c *server.Call) error {
	mediaType, params, err := mime.ParseMediaType(string(c.RC.Request.Header.ContentType()))
	if err != nil || mediaType != "multipart/form-data" || params["boundary"] == "" {
		return apierr.New(apierr.InvalidRequest, "expected a multipart/form-data body with the fields file and purpose")
	}
	if err := s.checkUser(c.Ctx, c.Principal.UserID); err != nil {
		return err
	}
	body := c.BodyStream()
	if body == nil {
		return apierr.Param("file", "missing the file field")
	}
	var (
		purpose    string
		hasPurpose bool
		staged     *File
	)
	defer func() {
		if staged != nil {
			s.discard(c.Ctx, staged)
		}
	}()
	mr := multipart.NewReader(body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return multipartError(err)
		}
		switch part.FormName() {
		case "purpose":
			v, err := io.ReadAll(io.LimitReader(part, 65))
			if err != nil {
				return multipartError(err)
			}
			purpose, hasPurpose = strings.TrimSpace(string(v)), true
			if err := checkPurpose(purpose); err != nil {
				return err
			}
		case "file":
			if staged != nil {
				return apierr.Param("file", "more than one file field; upload one file per request")
			}
			name := CleanFilename(part.FileName())
			if name == "" {
				return apierr.Param("file", "the file field must be a file upload with a filename")
			}
			f, err := s.stage(c.Ctx, c.Principal.UserID, part)
			if err != nil {
				return err
			}
			f.Filename, staged = name, f
		default:
			// Fields this API does not use (e.g. expires_after from newer SDKs) are skipped.
			if _, err := io.Copy(io.Discard, part); err != nil {
				return multipartError(err)
			}
		}
	}
	if staged == nil {
		return apierr.Param("file", "missing the file field")
	}
	if !hasPurpose {
		return apierr.Param("purpose", "missing the purpose field (fine-tune, batch, assistants or user_data)")
	}
	staged.Purpose = purpose
	if err := s.commit(c.Ctx, staged); err != nil {
		return err
	}
	f := staged
	staged = nil
	s.log.Info("file uploaded", "file_id", f.ID, "user_id", f.UserID, "purpose", f.Purpose, "bytes", f.Bytes)
	return c.JSON(200, f)
}

// multipartError maps a failure to read the multipart body: a 413 from the body's limit
// stays one; anything else is a malformed body.
func multipartError(err error) error {
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return ae
	}
	return &apierr.Error{Kind: apierr.InvalidRequest, Message: "malformed multipart/form-data body", Err: err}
}

// CleanFilename makes an uploaded file's name safe to store and show: its last path
// element, valid UTF-8, no control characters (NUL included), at most 255 bytes.
func CleanFilename(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ToValidUTF8(name, "\uFFFD")
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	for len(name) > 255 {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	if name == "." || name == ".." {
		return ""
	}
	return name
}

// list is OpenAI's list envelope for files.
type list struct {
	Object  string  `json:"object"`
	Data    []*File `json:"data"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
	HasMore bool    `json:"has_more"`
}

func (s *Service) handleList(c *server.Call) error {
	args := c.RC.QueryArgs()
	q := ListQuery{UserID: c.Principal.UserID, Limit: DefaultPage, After: string(args.Peek("after"))}
	if raw := args.Peek("limit"); raw != nil {
		n, err := strconv.Atoi(string(raw))
		if err != nil || n < 1 || n > 10000 {
			return apierr.Param("limit", "limit must be an integer from 1 to 10000")
		}
		q.Limit = min(n, MaxPage)
	}
	switch order := string(args.Peek("order")); order {
	case "", "desc":
	case "asc":
		q.Asc = true
	default:
		return apierr.Param("order", "order must be asc or desc")
	}
	// An admin may list another user's files (user_id); everyone else lists their own.
	if owner, filtered, err := c.QueryInt("user_id"); err != nil {
		return err
	} else if filtered && owner != q.UserID {
		if !c.Principal.IsAdmin() {
			return apierr.New(apierr.PermissionDenied, "only an admin may list other users' files")
		}
		q.UserID = owner
	}
	if raw := args.Peek("purpose"); raw != nil {
		q.Purpose = string(raw)
		if !slices.Contains(OutputPurposes, q.Purpose) {
			if err := checkPurpose(q.Purpose); err != nil {
				return err
			}
		}
	}
	files, err := s.store.list(c.Ctx, q)
	if errors.Is(err, ErrNotFound) {
		return apierr.Param("after", "after must be the id of one of your files")
	}
	if err != nil {
		return apierr.Wrap(err, "list files")
	}
	out := list{Object: "list", Data: files}
	if len(files) > q.Limit {
		out.Data, out.HasMore = files[:q.Limit], true
	}
	if out.Data == nil {
		out.Data = []*File{}
	}
	if n := len(out.Data); n > 0 {
		out.FirstID, out.LastID = &out.Data[0].ID, &out.Data[n-1].ID
	}
	return c.JSON(200, out)
}

func (s *Service) handleGet(c *server.Call) error {
	f, err := s.lookup(c)
	if err != nil {
		return err
	}
	return c.JSON(200, f)
}

func (s *Service) handleDelete(c *server.Call) error {
	id := c.Param("id")
	err := s.Delete(c.Ctx, id, c.Principal.UserID, c.Principal.IsAdmin())
	if errors.Is(err, ErrNotFound) {
		return notFound(id)
	}
	if err != nil {
		return apierr.Wrap(err, "delete file")
	}
	s.log.Info("file deleted", "file_id", id, "user_id", c.Principal.UserID)
	return c.JSON(200, map[string]any{"id": id, "object": "file", "deleted": true})
}

// handleContent streams the file's bytes (server.Call.StreamBody: the read outlives the
// handler).
func (s *Service) handleContent(c *server.Call) error {
	f, err := s.lookup(c)
	if err != nil {
		return err
	}
	return c.StreamBody("application/octet-stream", func(ctx context.Context) (io.ReadCloser, int64, error) {
		rc, n, err := s.Open(ctx, f)
		if err != nil {
			return nil, 0, apierr.Wrap(err, "open file")
		}
		c.RC.Response.Header.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": f.Filename}))
		return rc, n, nil
	})
}
