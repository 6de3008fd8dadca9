package trainer

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// AdapterConfigFile must be at the root of the trainer's output directory (PEFT's layout).
const AdapterConfigFile = "adapter_config.json"

var errNoAdapter = errors.New("the trainer exited 0 but wrote no " + AdapterConfigFile + " into {output_dir}")

// writeArchive writes the regular files and directories under dir into a tar file at dst,
// with paths relative to dir. Symbolic links and other special files are left out: the
// archive holds nothing from outside dir. It returns errNoAdapter when dir has no
// adapter_config.json at its root.
func writeArchive(dir, dst string) (files int, err error) {
	if _, err := os.Stat(filepath.Join(dir, AdapterConfigFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, errNoAdapter
		}
		return 0, err
	}
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(out)
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name = filepath.ToSlash(rel)
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
		if d.IsDir() {
			h.Name += "/"
			return tw.WriteHeader(h)
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, h.Size); err != nil {
			return fmt.Errorf("archive %s: %w", rel, err)
		}
		files++
		return nil
	})
	if err != nil {
		return files, err
	}
	return files, tw.Close()
}
