CALL=G1; source .gpu/common.sh
mkdir -p /tmp/whl && cp .whl1/* /tmp/whl/ && echo whl1 copied; ls /tmp/whl | wc -l
