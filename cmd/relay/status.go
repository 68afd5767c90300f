package main

import (
	"context"
	"fmt"
	"io"
)

func runCheck(ctx context.Context, cfg *config, out io.Writer) error {
	return fmt.Errorf("check: not implemented yet")
}

func runStatus(ctx context.Context, cfg *config, out io.Writer) error {
	return fmt.Errorf("status: not implemented yet")
}
