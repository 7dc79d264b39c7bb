package cluster

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// FieldError is one problem with one object (or one document) of the input,
// located the way the API server locates it: by field path inside the object.
type FieldError struct {
	// File and Doc locate the document ("" and 0 when the object did not
	// come from a file, e.g. from the informer source). Doc counts the
	// non-empty documents of File from 1.
	File string
	Doc  int
	// Object names the object, e.g. "NetworkPolicy default/x"; "" for
	// problems with the document itself (syntax errors).
	Object string
	// Field is the API field path, e.g. spec.ingress[0].ports[0].port; ""
	// when the problem is not with one field.
	Field string
	Msg   string
}

// Error renders "file:doc: field: what is wrong (Kind ns/name)".
func (e FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Doc > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Doc))
		}
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	if e.Object != "" {
		b.WriteString(" (")
		b.WriteString(e.Object)
		b.WriteByte(')')
	}
	return b.String()
}

// ValidationError lists every problem found in an input. The objects it
// names were dropped; everything else was loaded, so callers choose whether
// to go on with the partial state or to stop.
type ValidationError struct {
	Errors []FieldError
}

func (e *ValidationError) Error() string {
	switch len(e.Errors) {
	case 0:
		return "no errors"
	case 1:
		return e.Errors[0].Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d errors:", len(e.Errors))
	for _, fe := range e.Errors {
		b.WriteString("\n  ")
		b.WriteString(fe.Error())
	}
	return b.String()
}

// AsError returns nil for an empty list so that callers can test err != nil.
func AsError(errs []FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	return &ValidationError{Errors: errs}
}

// fromFieldErrors converts apimachinery's validation errors, keeping their
// path and rewording them to read as "field: what is wrong".
func fromFieldErrors(object string, list field.ErrorList) []FieldError {
	out := make([]FieldError, 0, len(list))
	for _, e := range list {
		out = append(out, FieldError{Object: object, Field: e.Field, Msg: describe(e)})
	}
	return out
}

func describe(e *field.Error) string {
	switch e.Type {
	case field.ErrorTypeRequired:
		if e.Detail == "" {
			return "required value"
		}
		return "required value: " + e.Detail
	case field.ErrorTypeForbidden:
		return "forbidden: " + e.Detail
	case field.ErrorTypeNotSupported:
		return fmt.Sprintf("unsupported value %s: %s", quoteValue(e.BadValue), e.Detail)
	case field.ErrorTypeTooLong, field.ErrorTypeTooMany:
		return e.Detail
	case field.ErrorTypeDuplicate:
		return fmt.Sprintf("duplicate value %s", quoteValue(e.BadValue))
	}
	if e.Detail == "" {
		return fmt.Sprintf("invalid value %s", quoteValue(e.BadValue))
	}
	return fmt.Sprintf("invalid value %s: %s", quoteValue(e.BadValue), e.Detail)
}

func quoteValue(v any) string {
	if s, ok := v.(fmt.Stringer); ok {
		return strconv.Quote(s.String())
	}
	// Named string types (operators, protocols) are quoted like strings.
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.String {
		return strconv.Quote(rv.String())
	}
	return fmt.Sprint(v)
}
