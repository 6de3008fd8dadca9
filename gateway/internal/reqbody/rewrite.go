package reqbody

// AppendIncludeUsage appends to dst the body f was parsed from, with
// stream_options.include_usage set to true, and returns the extended slice. Only the bytes
// that must change are changed: include_usage's value when the member is there (however its
// key was written), else the member is added at the start of stream_options, else
// stream_options is added at the start of the body; stream_options: null becomes
// {"include_usage":true}. body must be the bytes f was parsed from.
func (f *Fields) AppendIncludeUsage(dst, body []byte) []byte {
	switch {
	case f.so < 0:
		dst = append(dst, body[:f.open+1]...)
		dst = append(dst, `"stream_options":{"include_usage":true},`...)
		return append(dst, body[f.open+1:]...)
	case f.soNull || f.soZero:
		dst = append(dst, body[:f.so]...)
		dst = append(dst, `{"include_usage":true}`...)
		return append(dst, body[f.soEnd:]...)
	case f.iu >= 0:
		dst = append(dst, body[:f.iu]...)
		dst = append(dst, "true"...)
		return append(dst, body[f.iuEnd:]...)
	default:
		dst = append(dst, body[:f.so+1]...)
		dst = append(dst, `"include_usage":true,`...)
		return append(dst, body[f.so+1:]...)
	}
}
