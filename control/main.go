// Command control is the MaaS control plane: users, roles, API keys, quotas, the model
// registry and the backend registry, with the platform API on /api/v1 and the workers'
// endpoints on /internal/v1.
//
//	control [serve]              run the server (applies migrations and bootstraps the first admin)
//	control migrate up|down [N]|status|version|create NAME
//	control bootstrap
//	control keys create --username U --name N [--models a,b] [--scopes inference,management]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/maas-platform/maas/control/internal/service"
	"github.com/maas-platform/maas/pkg/config"
)

func main() {
	cmd, args := "serve", os.Args[1:]
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	if cmd == "help" {
		fmt.Print(service.Usage)
		return
	}
	opts, pos, err := service.Load(args)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		config.Fatal("control", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = service.Exec(ctx, cmd, opts, pos, os.Stdout)
	stop()
	if err != nil {
		if service.IsUsage(err) {
			config.Fatal("control", err)
		}
		fmt.Fprintf(os.Stderr, "control: %v\n", err)
		os.Exit(1)
	}
}
