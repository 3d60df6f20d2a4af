#[test]
fn sizes() {
    let g: oneflight::Group<u64, u64> = oneflight::Group::new();
    let f = g.work(&1, async { 1 });
    println!("work future: {}", std::mem::size_of_val(&f));
    let g2: oneflight::Group<String, String> = oneflight::Group::new();
    let f2 = g2.work("a", async { String::new() });
    println!("work future String: {}", std::mem::size_of_val(&f2));
}
