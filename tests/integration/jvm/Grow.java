// Grows until killed: `heap` keeps 1 MiB arrays, `direct` 1 MiB direct
// buffers (off the Java heap); `exit3` is an ordinary failure (exit 3).
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;

public class Grow {
    public static void main(String[] args) throws Exception {
        List<Object> keep = new ArrayList<>();
        System.out.println("ready");
        System.out.flush();
        Thread.sleep(Long.parseLong(args.length > 1 ? args[1] : "1500"));
        if (args[0].equals("exit3")) {
            System.exit(3);
        }
        for (int i = 0; ; i++) {
            if (args[0].equals("direct")) {
                ByteBuffer b = ByteBuffer.allocateDirect(1 << 20);
                for (int j = 0; j < b.capacity(); j += 4096) b.put(j, (byte) 1);
                keep.add(b);
            } else {
                // 128 KiB: no humongous objects under G1, whose regions are 1 MiB here
                byte[] a = new byte[128 << 10];
                for (int j = 0; j < a.length; j += 4096) a[j] = 1;
                keep.add(a);
            }
            if (i % 32 == 0) Thread.sleep(5);
        }
    }
}
