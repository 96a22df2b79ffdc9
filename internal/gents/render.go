package gents

import (
	"strconv"
	"strings"
	"sync"
	"text/template"

	"github.com/parleyrpc/parley/templates"
)

var (
	clientTemplateOnce sync.Once
	clientTemplate     *template.Template
	clientTemplateErr  error
)

func loadTemplate() (*template.Template, error) {
	clientTemplateOnce.Do(func() {
		clientTemplate, clientTemplateErr = template.New("client.ts.tmpl").
			Funcs(template.FuncMap{
				"jsdoc": formatJSDoc,
				"str":   tsString,
			}).
			ParseFS(templates.FS, "client.ts.tmpl")
	})
	return clientTemplate, clientTemplateErr
}

func render(m *fileModel) (string, error) {
	t, err := loadTemplate()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	if err := t.Execute(&b, m); err != nil {
		return "", err
	}
	return b.String(), nil
}

// tsString quotes s as a TypeScript string literal. Go's quoting is valid
// TypeScript for the procedure names and module paths we write.
func tsString(s string) string { return strconv.Quote(s) }
