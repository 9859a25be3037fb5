package dataplane

// The generated director_bpfel.* and decap_bpfel.* are committed so that
// building raftlb needs no clang; run `go generate ./dataplane` after
// changing anything under bpf/.
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -mcpu=v3 -I/usr/include/x86_64-linux-gnu" -type event -type conn_key -type conn -type rnat_key -type rnat director bpf/director.c
//go:generate go tool bpf2go -target bpfel -cflags "-O2 -g -Wall -mcpu=v3 -I/usr/include/x86_64-linux-gnu" decap bpf/decap.c
